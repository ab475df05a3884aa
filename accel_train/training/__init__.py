"""What the loop needs besides the model and the data: the start of a run (start.py), optimizers, the
learning-rate schedule, metrics and trackers, the device and precision, the step plan (the micro-batch,
searched for on a GPU) and loss-spike skipping."""
