"""A hook on each optimizer step of the run itself, for the scripts that record what training does."""

from torch._subclasses.fake_tensor import FakeTensor
from torch.optim.optimizer import register_optimizer_step_pre_hook


def before_each_run_step(record) -> None:
    """Call `record(optimizer)` as each of the run's optimizers is about to step; the memory plan's optimizers, which
    step on fake tensors before the run builds its model (accel_train/planning/), are passed over."""
    def hook(optimizer, args, kwargs):
        if not any(isinstance(p, FakeTensor) for group in optimizer.param_groups for p in group["params"]):
            record(optimizer)

    register_optimizer_step_pre_hook(hook)
