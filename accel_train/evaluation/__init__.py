"""Measuring a model during training: the validation loss (validation.py, the seed's estimate_loss) and
multiple-choice tasks scored by log-likelihood (multiple_choice.py; the shipped task from demo_task.py)."""
