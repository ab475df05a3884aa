"""Skip the update of a step whose loss or gradient norm is an outlier against the recent steps, as OLMo-core's
SkipStepOptimizer does: a finite loss spike (a bad batch) would otherwise be applied to the weights unnoticed.

A step is an outlier when its value lies more than `sigma` standard deviations above the mean of the last
`window` steps, judged once half the window is filled. Every step's values join the history, skipped or not.
The history lives in the trainer state (`spike_history`), so a resumed run decides exactly as an uninterrupted
one, and every process decides alike: the loss is averaged across processes first and the gradient norm is the
global one.
"""

from __future__ import annotations

import math
import statistics


class SpikeGuard:
    """Decides, step by step, whether an update is skipped; `last_z` holds the latest step's z-scores, for its
    metrics row (none before half a window)."""

    def __init__(self, sigma: float, window: int, history: dict | None = None):
        self.sigma, self.window = sigma, window
        self.history = history or {"loss": [], "grad_norm": []}  # the saved one, oldest first; each checkpoint saves it
        self.last_z: dict[str, float] = {}

    def z_score(self, name: str, value: float) -> float | None:
        """How many standard deviations `value` lies above the history's mean; None before half a window."""
        past = self.history[name]
        if len(past) < max(2, self.window // 2):
            return None
        mean, std = statistics.fmean(past), statistics.stdev(past)
        if std == 0:
            return math.inf if value > mean else 0.0
        return (value - mean) / std

    def outlier_reason(self) -> str:
        """Why the latest step was judged a spike: each of its values that lies more than sigma above its history."""
        words = {"loss_z": "loss", "grad_norm_z": "gradient norm"}
        return " and ".join(f"{words[key]} {z:.1f} standard deviations above its recent mean (spike_sigma "
                            f"{self.sigma:g})" for key, z in self.last_z.items() if z > self.sigma)

    def is_spike(self, loss: float, grad_norm: float) -> bool:
        """Whether this step's update is to be skipped; the step's values then join the history (a non-finite
        one is left out: the nonfinite setting deals with it, and it would poison every later mean)."""
        z_loss, z_grad = self.z_score("loss", loss), self.z_score("grad_norm", grad_norm)
        self.last_z = {key: z for key, z in (("loss_z", z_loss), ("grad_norm_z", z_grad)) if z is not None}
        spike = any(z is not None and z > self.sigma for z in (z_loss, z_grad))
        for name, value in (("loss", loss), ("grad_norm", grad_norm)):
            if math.isfinite(value):
                past = self.history[name]
                past.append(value)
                del past[:-self.window]
        return spike
