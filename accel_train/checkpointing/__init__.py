"""What survives a run: checkpoints written and verified atomically, the checks that decide whether
a run may resume from one, and the lock that keeps one run per out_dir."""
