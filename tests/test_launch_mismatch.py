"""A launch that does not give the trainer the processes the launcher started is refused with one `error:` line
and exit status 2, before anything is written: otherwise each process may train alone, all writing one out_dir."""

import sys

from helpers import TINY_MODEL, TRAIN, command, run, run_side_by_side

RUN = ["--max_iters", "2", "--batch_size", "4", "--block_size", "64", "--warmup_steps", "1", "--eval_iters", "1",
       "--demo_data", "false", "--plot", "false", "--sample_tokens", "0", *TINY_MODEL]


def errors(result) -> list[str]:
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("error:")]


def test_fsdp_on_a_machine_without_gpus_is_refused_with_the_real_reason(demo_data_dir, tmp_path):
    """FSDP1 (Accelerate's plugin raises on the CPU) and FSDP2 (Accelerate drops the plugin and runs DDP)."""
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--main_process_port", "0"]
    cases = {"fsdp1": [*launch, "--use_fsdp"], "fsdp2": [*launch, "--config_file", "configs/accelerate/fsdp.yaml"]}
    results = run_side_by_side([(name, [*cmd, TRAIN, "--data_dir", str(demo_data_dir), "--out_dir",
                                        str(tmp_path / name), "--device", "cpu", *RUN], [])
                                for name, cmd in cases.items()])
    for name, (status, stderr, _) in results.items():
        lines = [line for line in stderr.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and "2 process" in lines[0], (name, stderr[-3000:])
        assert "enables FSDP only on GPU-like devices" in lines[0] and "--multi_gpu" in lines[0], lines[0]
        assert "train.py\", line" not in stderr  # no trainer traceback (the launcher adds its own report)
        assert status != 0 and not (tmp_path / name).exists()


def test_fewer_processes_than_the_launcher_started_is_refused(demo_data_dir, tmp_path):
    """Accelerate counts processes from PMI_SIZE before WORLD_SIZE when LOCAL_RANK is unset: on the CPU, the way
    to make it see one process of two (as `srun` setting WORLD_SIZE but not LOCAL_RANK does on GPUs)."""
    out = tmp_path / "out"
    result = run(["python", TRAIN, "--data_dir", str(demo_data_dir), "--out_dir", str(out), *RUN],
                 env={"WORLD_SIZE": "2", "RANK": "0", "PMI_SIZE": "1"})
    assert errors(result) == [e for e in errors(result) if "started 2 processes" in e and "sees 1" in e]
    assert len(errors(result)) == 1 and result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and not out.exists()


def test_several_machines_without_a_process_group_are_refused(demo_data_dir, tmp_path):
    """`--num_machines 2` without `--multi_gpu` runs Accelerate's one-process launcher on each machine: two
    independent runs. Both "machines" here are this host, each with its own out_dir, as separate disks would be."""
    cases = [(f"rank {rank}", [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_machines", "2",
                               "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1", "--main_process_port",
                               "29531", TRAIN, "--data_dir", str(demo_data_dir), "--out_dir",
                               str(tmp_path / f"out{rank}"), *RUN], []) for rank in (0, 1)]
    for name, (status, stderr, _) in run_side_by_side(cases).items():
        lines = [line for line in stderr.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and "--multi_gpu" in lines[0] and "alone" in lines[0], (name, stderr[-3000:])
        assert status != 0 and "train.py\", line" not in stderr, (name, stderr[-3000:])
    assert not any(tmp_path.glob("out*"))


def test_a_refused_start_under_torchrun_leads_with_the_trainers_one_line(demo_data_dir, tmp_path):
    """What docs/launching.md says a user sees: the trainer's `error:` line first, once, then torchrun's report,
    whose root cause is the trainer's exit status 2; nothing written."""
    out = tmp_path / "out"
    result = run(command(TRAIN, ["--data_dir", str(demo_data_dir), "--out_dir", str(out), *RUN, "--warmup_steps",
                                 "2"], processes=2))
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [i for i, line in enumerate(lines) if line.startswith("error:")]
    assert len(errors) == 1 and "warmup_steps" in lines[errors[0]], result.stderr[-3000:]
    assert not any("Traceback" in line or "FAILED" in line for line in lines[:errors[0]]), result.stderr[-3000:]
    assert result.returncode != 0 and "exitcode  : 2" in result.stderr and not out.exists(), result.stderr[-3000:]
