"""Test support, never installed: lets Accelerate run FSDP2 on the CPU (gloo), so the tests can prove the trainer's
FSDP paths on a machine without GPUs. Python imports this file at start-up in every process whose PYTHONPATH holds
this folder (tests/test_fsdp.py puts it there for its runs only).

Accelerate 1.16's `AcceleratorState` turns FSDP on only for GPU-like distributed types: on the CPU it builds the
FSDP plugin from the launcher's settings, then drops it and runs plain DDP. torch's `fully_shard` and distributed
checkpointing work over gloo, so right after the state is built this sets what Accelerate sets on a GPU (the
distributed type FSDP, the plugin attached). It first checks that Accelerate still behaves as described: should an
upgrade change that, every FSDP test fails loudly here instead of quietly testing DDP, or FSDP twice patched.
"""

import functools

from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType

_build = AcceleratorState.__init__


@functools.wraps(_build)
def _build_with_fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs):
    first = not AcceleratorState._shared_state  # later calls only read the shared state back
    _build(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if not first or fsdp_plugin is None:
        return
    if self.distributed_type != DistributedType.MULTI_CPU or getattr(self, "fsdp_plugin", None) is not None:
        raise RuntimeError(f"tests/fsdp_on_cpu expects Accelerate to drop the FSDP plugin on the CPU (distributed type "
                           f"MULTI_CPU, no fsdp_plugin); this Accelerate gave {self.distributed_type} with "
                           f"fsdp_plugin {getattr(self, 'fsdp_plugin', None)!r}: revisit the hook")
    if self.mixed_precision != "no":  # as Accelerate does on a GPU
        fsdp_plugin.set_mixed_precision(self.mixed_precision)
    self.distributed_type = DistributedType.FSDP
    self.fsdp_plugin = fsdp_plugin
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP


AcceleratorState.__init__ = _build_with_fsdp_on_cpu
