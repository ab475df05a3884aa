"""Measuring a model during training: the validation loss (validation.py, the seed's estimate_loss)."""
