"""Planning a run before it allocates anything: each process's memory (one training step on fake tensors, measured
by torch's MemTracker), the largest micro-batch that fits a named GPU, and the time to max_iters at a stated MFU.

`python -m accel_train.plan` prints a plan; the trainer checks one before it builds its model.
"""
