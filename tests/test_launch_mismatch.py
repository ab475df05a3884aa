"""A launch that does not give the trainer the processes the launcher started is refused with one `error:` line
and exit status 2, before anything is written: otherwise each process may train alone, all writing one out_dir."""

from helpers import TINY_MODEL, TRAIN, run

RUN = ["--max_iters", "2", "--batch_size", "4", "--block_size", "64", "--warmup_steps", "1", "--eval_iters", "1",
       "--demo_data", "false", "--plot", "false", "--sample_tokens", "0", *TINY_MODEL]


def errors(result) -> list[str]:
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("error:")]


def test_fsdp_on_a_machine_without_gpus_is_refused(demo_data_dir, tmp_path):
    out = tmp_path / "out"
    result = run(["accelerate", "launch", "--num_processes", "2", "--use_fsdp", "--main_process_port", "0", TRAIN,
                  "--data_dir", str(demo_data_dir), "--out_dir", str(out), "--device", "cpu", *RUN])
    lines = errors(result)
    assert len(lines) == 1 and "FSDP" in lines[0] and "2 process" in lines[0], result.stderr[-3000:]
    assert "train.py\", line" not in result.stderr  # no trainer traceback (the launcher adds its own report)
    assert result.returncode != 0 and not out.exists()


def test_fewer_processes_than_the_launcher_started_is_refused(demo_data_dir, tmp_path):
    """Accelerate counts processes from PMI_SIZE before WORLD_SIZE when LOCAL_RANK is unset: on the CPU, the way
    to make it see one process of two (as `srun` setting WORLD_SIZE but not LOCAL_RANK does on GPUs)."""
    out = tmp_path / "out"
    result = run(["python", TRAIN, "--data_dir", str(demo_data_dir), "--out_dir", str(out), *RUN],
                 env={"WORLD_SIZE": "2", "RANK": "0", "PMI_SIZE": "1"})
    assert errors(result) == [e for e in errors(result) if "started 2 processes" in e and "sees 1" in e]
    assert len(errors(result)) == 1 and result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and not out.exists()
