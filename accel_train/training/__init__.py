"""What the loop needs besides the model and the data: optimizers, the learning-rate schedule, metrics
and trackers, the hardware settings resolved once, and the automatic micro-batch."""
