"""Rank 0 of N processes, played by this one process on fake tensors: FakeTensorMode gives every tensor a shape,
dtype and device but no memory, and torch's `fake` process-group backend answers collectives without peers. The
model is wrapped for N processes by Accelerate's own FSDP2 wrap (`fsdp2_prepare_model`), as a launch with
configs/accelerate/fsdp.yaml wraps it.
"""

from __future__ import annotations

import contextlib
import types

import torch
import torch.distributed as dist
from torch._subclasses.fake_tensor import FakeTensorMode

MESH_DIM = "dp_shard"


@contextlib.contextmanager
def fake_processes(world_size: int):
    """A fake process group of `world_size` with this process as rank 0, for the duration; yields its device mesh.
    Inside a launch (the trainer's check), every process calls this and plays its own rank of a fake subgroup."""
    from torch.testing._internal.distributed.fake_pg import FakeStore  # registers the `fake` backend

    launched = dist.is_initialized()
    if launched:
        group = dist.new_group(backend="fake")
    else:
        dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world_size)
        group = dist.group.WORLD
    try:  # built outside FakeTensorMode: the mesh reads its rank table
        yield dist.device_mesh.DeviceMesh.from_group(group, "cpu", mesh_dim_names=(MESH_DIM,))
    finally:
        dist.destroy_process_group(group if launched else None)


def fake_tensors():
    """FakeTensorMode for a whole plan: models, optimizers and steps in it allocate nothing."""
    return FakeTensorMode()


def fsdp_plugin():
    """Accelerate's FSDP plugin as a launch makes it: from the launcher's FSDP_* settings when there are some, else
    those of configs/accelerate/fsdp.yaml (FSDP2, one unit per decoder layer, resharded after forward)."""
    from accelerate.utils import FullyShardedDataParallelPlugin

    from accel_train.distributed.launcher import fsdp_requested

    if fsdp_requested():
        return FullyShardedDataParallelPlugin()
    return FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="transformer_based_wrap",
                                          transformer_cls_names_to_wrap=["DecoderLayer"], reshard_after_forward=True,
                                          state_dict_type="SHARDED_STATE_DICT")


def fully_sharded(model: torch.nn.Module, mesh, mixed_precision: str) -> torch.nn.Module:
    """`model` wrapped by Accelerate's fsdp2_prepare_model over `mesh`, with the plugin a launch gets, its mixed
    precision set as Accelerate sets it for `mixed_precision` ("no", "bf16", "fp16")."""
    from accelerate.utils.fsdp_utils import fsdp2_prepare_model

    plugin = fsdp_plugin()
    if mixed_precision != "no":
        plugin.set_mixed_precision(mixed_precision)
    accelerator = types.SimpleNamespace(  # what fsdp2_prepare_model reads of the Accelerator
        state=types.SimpleNamespace(fsdp_plugin=plugin), mixed_precision=mixed_precision, is_main_process=True,
        device=torch.device("cpu"), torch_device_mesh=mesh,
        parallelism_config=types.SimpleNamespace(fsdp_dim_names=(MESH_DIM,)))
    return fsdp2_prepare_model(accelerator, model)
