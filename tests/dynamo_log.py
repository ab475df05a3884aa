"""What torch.compile did in each process of a run, read from the run's stderr under TORCH_LOGS=DYNAMO_LOGS: each
compile (recompiles included), each recompile with the first guard that failed, and where a graph broke.

TORCH_LOGS is read when torch is imported, so these runs start fresh interpreters (warm_commands.py)."""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

DYNAMO_LOGS = "dynamo,recompiles,graph_breaks"
# `I1208 00:56:09.633000 31128 site-packages/torch/_dynamo/x.py:5335] [0/1] message`: pid, frame/compile id; found
# anywhere in a line, as a progress bar's line (tqdm, unended on stderr) or a launcher's `[rank0]:` may precede it
RECORD = re.compile(r"[IVWE]\d{4} \d\d:\d\d:\d\d\.\d+ (?P<pid>\d+) \S+\] \[(?P<frame>\d+)/(?P<compile>\d+)\S*\] "
                    r"(?P<message>.*)$")
TRACED = re.compile(r"Step 1: torchdynamo start tracing (?P<function>\S+) (?P<path>\S+?):\d+$")
RECOMPILED = re.compile(r"\[__recompiles\] Recompiling function (?P<function>\S+) in (?P<path>\S+?):\d+$")
FAILED_GUARD = re.compile(r"\[__recompiles\]\s+- \d+/\d+: (?P<guard>.*)$")
BROKE = re.compile(r"\[__graph_breaks\] Graph break .*in user code at (?P<path>\S+?):\d+$")


@dataclass
class Compiles:
    """One process's compiles, each named `function file`: a frame's compile ids count once however often dynamo
    restarted its analysis after a graph break."""
    compiled: dict = field(default_factory=dict)  # (frame, compile id): "function file"
    recompiles: list = field(default_factory=list)  # ["function file", first failed guard]
    breaks: list = field(default_factory=list)  # the file of each graph break

    def count(self, of_files: tuple[str, ...]) -> dict[str, int]:
        """{"function file": compiles} of the frames in those files."""
        counts = defaultdict(int)
        for name in self.compiled.values():
            if name.split(" ")[1] in of_files:
                counts[name] += 1
        return dict(counts)


def compiles_by_process(stderr: str) -> dict[int, Compiles]:
    """{pid: Compiles} of every process that logged a compile."""
    processes = defaultdict(Compiles)
    for line in stderr.splitlines():
        record = RECORD.search(line)
        if record is None:
            continue
        process, message = processes[int(record["pid"])], record["message"]
        if traced := TRACED.search(message):
            process.compiled[record["frame"], record["compile"]] = f"{traced['function']} {Path(traced['path']).name}"
        elif recompiled := RECOMPILED.search(message):
            process.recompiles.append([f"{recompiled['function']} {Path(recompiled['path']).name}", None])
        elif (guard := FAILED_GUARD.search(message)) and process.recompiles and process.recompiles[-1][1] is None:
            process.recompiles[-1][1] = guard["guard"].split("#")[0].strip()
        elif broke := BROKE.search(message):
            process.breaks.append(Path(broke["path"]).name)
    return {pid: process for pid, process in processes.items() if process.compiled}
