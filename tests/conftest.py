import pytest
from accelerate.state import AcceleratorState, GradientState

from accel_train.demo_corpus import write_demo_data
from helpers import gpt2_like_encoding


@pytest.fixture(scope="session")
def demo_data_dir(tmp_path_factory):
    """The built-in demo corpus, written once per test session."""
    path = tmp_path_factory.mktemp("demo") / "data"
    write_demo_data(path)
    return path


@pytest.fixture
def local_gpt2(monkeypatch):
    """A GPT-2-shaped tiktoken encoding built from local ranks (bytes plus a few merges; end-of-text 50256),
    put in tiktoken's registry so `tiktoken.get_encoding("gpt2")`, and processes forked after it, use it
    instead of downloading the real one."""
    import tiktoken.registry

    encoding = gpt2_like_encoding("gpt2", eot_token=50256)
    monkeypatch.setitem(tiktoken.registry.ENCODINGS, "gpt2", encoding)
    return encoding


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, demo_data_dir):
    """(out_dir, stdout) of a tiny model trained for 24 steps on the demo corpus, through the real CLI;
    shared by the sampling, export and plot tests, which only read it."""
    from helpers import TINY_MODEL, train

    out = tmp_path_factory.mktemp("trained") / "run"
    result = train(["--data_dir", str(demo_data_dir), "--out_dir", str(out), *TINY_MODEL, "--max_iters", "24",
                    "--warmup_steps", "2", "--batch_size", "8", "--gradient_accumulation_steps", "1",
                    "--learning_rate", "3e-3", "--min_lr", "3e-4", "--eval_interval", "12", "--eval_iters", "2",
                    "--log_interval", "3", "--sample_tokens", "40"])
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result.stdout


@pytest.fixture
def fresh_accelerate_state():
    """Accelerate keeps process-wide state; tests that build their own Accelerator in this process
    start and end with none, as Accelerate's own tests do."""
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
