"""The machine a plan is for: a GPU by the names models/flops.PEAK_TFLOPS knows (its memory and peak), a memory
size, or this machine; and the terms of a GPU's memory that a CPU cannot see, with the sizes assumed for them.
"""

from __future__ import annotations

from dataclasses import dataclass

from accel_train.errors import UserError
from accel_train.models.flops import PEAK_TFLOPS

GIB = 2**30
MIB = 2**20

# Memory of each card in PEAK_TFLOPS, in MiB as nvidia-smi reports it (A100, A800 and V100: their larger models;
# give --memory_gib for the others)
GPU_MEMORY_MIB = {"B200": 183_359, "H200": 143_771, "H100 PCIe": 81_559, "H100 NVL": 95_830, "H100": 81_559,
                  "H800": 81_559, "A100": 81_920, "A800": 81_920, "L40S": 46_068, "L4": 23_034, "A10": 23_028,
                  "V100": 32_768, "T4": 15_360}

# What a GPU process holds beyond the tensors a CPU plan counts; assumed, to be calibrated on a GPU run:
# (name, fixed bytes, share of the planned peak)
GPU_TERMS = (
    ("CUDA context", 512 * MIB, 0.0),
    ("cuBLAS workspaces", 32 * MIB, 0.0),
    ("caching allocator reserve", 0, 0.05),
)
COMPILE_TERM = ("torch.compile's own buffers", 256 * MIB, 0.0)


def gpu_name(name: str) -> str:
    """The PEAK_TFLOPS name of `name` (any case; `-` or `_` for a space): h100, H100-PCIe, b200, ..."""
    wanted = name.replace("-", " ").replace("_", " ").strip().lower()
    for known in GPU_MEMORY_MIB:
        if known.lower() == wanted:
            return known
    raise UserError(f"unknown --gpu {name!r}; known: {', '.join(n.lower().replace(' ', '-') for n in GPU_MEMORY_MIB)}"
                    " (or give --memory_gib and --peak_tflops)")


@dataclass(frozen=True)
class Machine:
    """Where each process runs: a GPU (named, or of `memory` bytes) or the CPU of this machine."""
    name: str
    memory: int  # bytes one process may use
    gpu: bool
    peak_tflops: float | None  # bf16 dense peak, None where unknown

    @classmethod
    def named(cls, gpu: str, memory_gib: float, peak_override: float) -> Machine:
        """--gpu NAME and/or --memory_gib (which wins for memory); neither: this machine's CPU."""
        if gpu:
            known = gpu_name(gpu)
            peak = peak_override or dict(PEAK_TFLOPS)[known]
            memory = int(memory_gib * GIB) if memory_gib else GPU_MEMORY_MIB[known] * MIB
            return cls(known, memory, True, peak)
        if memory_gib:
            return cls(f"a GPU of {memory_gib:g} GiB", int(memory_gib * GIB), True, peak_override or None)
        return cls.this_cpu(peak_override)

    @classmethod
    def this_cpu(cls, peak_override: float = 0.0, processes: int = 1) -> Machine:
        """This machine's CPU: the memory available now, shared by `processes` processes."""
        import psutil

        return cls("this machine's CPU", psutil.virtual_memory().available // processes, False, peak_override or None)

    def extra_terms(self, peak: int, compiled: bool) -> list[tuple[str, int]]:
        """(name, bytes) of each term this machine adds to a planned `peak`: GPU_TERMS (and COMPILE_TERM when
        compiling) on a GPU, none on the CPU."""
        if not self.gpu:
            return []
        terms = GPU_TERMS + ((COMPILE_TERM,) if compiled else ())
        return [(name, fixed + int(share * peak)) for name, fixed, share in terms]
