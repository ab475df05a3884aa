"""Work done on one process or on all, whose UserError stops every process with the same one line: only rank 0
prints errors, and a process that failed alone would leave the others waiting for it in the next collective. And
warnings, said by the main process alone."""

from __future__ import annotations

import warnings

from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, gather_object

from accel_train.errors import UserError


def on_main_process(accelerator: Accelerator, fn):
    """fn() on the main process only, its result given to every process; a UserError there is raised by all."""
    outcome = [None, None]
    if accelerator.is_main_process:
        try:
            outcome = [fn(), None]
        except UserError as err:
            outcome = [None, str(err)]
    if accelerator.num_processes > 1:
        broadcast_object_list(outcome)
    if outcome[1] is not None:
        raise UserError(outcome[1])
    return outcome[0]


def on_every_process(accelerator: Accelerator, fn):
    """fn() on every process, its result returned; a UserError on any is raised by all, with the first failing
    process's message: only rank 0 prints errors, and a process failing alone would leave the others waiting."""
    result = None
    try:
        result, error = fn(), None
    except UserError as err:
        error = str(err)
    errors = gather_object([error]) if accelerator.num_processes > 1 else [error]
    failed = [message for message in errors if message is not None]
    if failed:
        raise UserError(failed[0])
    return result


def warn_on_main_process_only(accelerator: Accelerator) -> None:
    """Silence Python's warnings on every process but the main one, so that each is said once, not once per
    process (process-wide, for the rest of the run)."""
    if not accelerator.is_main_process:
        warnings.filterwarnings("ignore")
