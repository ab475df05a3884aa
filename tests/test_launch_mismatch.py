"""A launch that does not give the trainer the processes the launcher started is refused with one `error:` line
and exit status 2, before anything is written: otherwise each process may train alone, all writing one out_dir."""

import sys

from helpers import TINY_MODEL, TRAIN, run, run_side_by_side

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
