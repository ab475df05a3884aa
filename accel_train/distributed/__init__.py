"""Running as several processes: the check that the trainer and its launcher agree, and the stop
signals (SIGTERM/SIGINT) that every process must see before the run stops at the same step."""
