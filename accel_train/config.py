"""Run configuration: a typed object loaded from JSON, overridable from the command line.

Replaces the seed's module-level globals. Every key can be set in the JSON file or as
`--key value` (`--model.key value` for the model's shape); a mistake is a UserError.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path

from accel_train.errors import UserError
from accel_train.model import ModelConfig
from accel_train.optim import require_muon
from accel_train.schedule import SCHEDULES

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO_ROOT / "configs" / "demo.json"
DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda")
TRACKERS = ("none", "wandb", "tensorboard")
NONFINITE = ("stop", "skip")
SWITCHES = ("auto", "on", "off")
OPTIMIZERS = ("adamw", "muon")
MUON_ADJUST_LR = ("match_rms_adamw", "original")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass
class TrainConfig:
    # data and outputs
    data_dir: str = "data/demo"
    demo_data: bool = False  # data_dir is data/demo: write the built-in demo corpus there if missing (or older)
    out_dir: str = "out"
    seed: int = 1337
    # hardware: "auto" picks cuda when present, and bf16 where the GPU has it (fp16 otherwise)
    device: str = "auto"
    dtype: str = "auto"
    # optimisation; max_iters and warmup_steps count optimizer steps, not micro-batches
    learning_rate: float = 1e-4
    min_lr: float = 1e-5
    max_iters: int = 150_000
    warmup_steps: int = 1_000
    batch_size: int = 32
    block_size: int = 128
    gradient_accumulation_steps: int = 32
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 0.5  # 0 disables clipping
    lr_schedule: str = "cosine"  # after warmup: "cosine" to min_lr, or "wsd": constant, then linear to min_lr
    decay_fraction: float = 0.2  # wsd: the share of max_iters, at its end, over which the rate falls to min_lr
    # "adamw" for every weight, or "muon": Muon for the attention and MLP matrices, AdamW (above) for the rest
    optimizer: str = "adamw"
    muon_lr: float = 0.0  # Muon's peak rate; 0: learning_rate. Its schedule and min_lr follow in proportion
    muon_momentum: float = 0.95  # Muon's Nesterov momentum
    # Muon's update size (torch's adjust_lr_fn): "match_rms_adamw" scales it to AdamW's, 0.2 x sqrt(max(rows, cols)),
    # so that learning_rate suits both; "original" (Keller Jordan's) by sqrt(max(1, rows / cols)): several times
    # smaller at the same rate, so it wants a larger muon_lr (his runs use 0.02 to 0.05)
    muon_adjust_lr: str = "match_rms_adamw"
    # speed; "auto" switches on what pays on this device: with CUDA on, on the CPU off
    micro_batch: int = 0  # sequences per forward pass; 0: batch_size on the CPU, the largest that fits on a GPU
    compile: str = "auto"  # torch.compile the model and its loss: auto, on or off
    compile_mode: str = "default"  # torch.compile's mode; max-autotune tries more matmul kernels (minutes more)
    fused_adamw: str = "auto"  # AdamW's fused kernel: auto, on or off
    fused_loss: bool = True  # cross-entropy a chunk of tokens at a time, fused with the output projection
    checkpoint_layers: bool = False  # recompute each layer in the backward pass: much less memory, ~1/3 more work
    activation_memory_budget: float = 1.0  # compiled: share of the activations kept for backward; less recomputes
    peak_tflops: float = 0.0  # the device's peak for MFU; 0: NVIDIA's figure for the GPU (none on the CPU)
    # evaluation: how often (optimizer steps) and how many batches per split
    eval_interval: int = 500
    eval_iters: int = 200
    # logging and checkpoints
    log_interval: int = 10
    checkpoint_interval: int = 1_000  # 0: only the final checkpoint
    keep_last: int = 3  # newest checkpoints kept besides best/; 0 keeps all
    nonfinite: str = "stop"  # a non-finite loss or gradient norm: "stop" the run, or "skip" the update and count it
    tracker: str = "none"
    wandb_project: str = "accel_train"
    run_name: str = ""
    resume: str = ""  # "", "auto" (newest checkpoint in out_dir) or a checkpoint folder
    init_from: str = ""  # a local HuggingFace Gemma 3 folder to start from; its config.json sets the model shape
    watch_interval: int = 100  # wandb: gradient and parameter histograms every N optimizer steps (0: never)
    wandb_tags: str = ""  # comma-separated
    sample_tokens: int = 200  # length of the sample printed at the end of a run (0: none)
    plot: bool = True  # draw out_dir/metrics.png at the end of a run
    model: ModelConfig = field(default_factory=ModelConfig)

    @property
    def tokens_per_step(self) -> int:
        """Tokens per optimizer step on one process."""
        return self.batch_size * self.block_size * self.gradient_accumulation_steps

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> "TrainConfig":
        _check_finite(self)
        positive = ("max_iters", "batch_size", "block_size", "gradient_accumulation_steps", "eval_interval",
                    "eval_iters", "log_interval")
        for name in positive:
            if getattr(self, name) < 1:
                raise UserError(f"config key '{name}' must be at least 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "checkpoint_interval", "keep_last", "weight_decay", "grad_clip", "min_lr",
                     "watch_interval", "sample_tokens", "micro_batch", "peak_tflops", "muon_lr"):
            if getattr(self, name) < 0:
                raise UserError(f"config key '{name}' must not be negative, got {getattr(self, name)}")
        if not 0 <= self.activation_memory_budget <= 1:
            raise UserError(f"config key 'activation_memory_budget' must lie in [0, 1], got {self.activation_memory_budget}")
        if self.learning_rate <= 0:
            raise UserError(f"config key 'learning_rate' must be positive, got {self.learning_rate}")
        if self.weight_decay * self.learning_rate >= 1:
            raise UserError(f"weight_decay x learning_rate is {self.weight_decay * self.learning_rate:g}; at 1 or more "
                            "each step would shrink the weights past zero: lower weight_decay or learning_rate")
        if self.weight_decay * self.muon_lr >= 1:
            raise UserError(f"weight_decay x muon_lr is {self.weight_decay * self.muon_lr:g}; at 1 or more each step "
                            "would shrink the weights past zero: lower weight_decay or muon_lr")
        if not 0 <= self.muon_momentum < 1:
            raise UserError(f"config key 'muon_momentum' must lie in [0, 1), got {self.muon_momentum}")
        if not 0 < self.decay_fraction <= 1:
            raise UserError(f"config key 'decay_fraction' must lie in (0, 1], got {self.decay_fraction}")
        if self.lr_schedule == "wsd" and self.warmup_steps > self.max_iters * (1 - self.decay_fraction):
            raise UserError(f"warmup_steps ({self.warmup_steps}) run into the decay, the last decay_fraction "
                            f"({self.decay_fraction}) of max_iters ({self.max_iters}); lower one of them")
        if self.min_lr > self.learning_rate:
            raise UserError(f"min_lr ({self.min_lr}) is above learning_rate ({self.learning_rate}): "
                            "the cosine decay would raise the rate; set min_lr <= learning_rate")
        if self.warmup_steps >= self.max_iters:
            raise UserError(f"warmup_steps ({self.warmup_steps}) must be below max_iters ({self.max_iters})")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise UserError(f"beta1 and beta2 must lie in [0, 1), got {self.beta1} and {self.beta2}")
        for name, allowed in (("dtype", DTYPES), ("device", DEVICES), ("tracker", TRACKERS), ("nonfinite", NONFINITE),
                              ("compile", SWITCHES), ("compile_mode", COMPILE_MODES), ("fused_adamw", SWITCHES),
                              ("optimizer", OPTIMIZERS), ("lr_schedule", SCHEDULES),
                              ("muon_adjust_lr", MUON_ADJUST_LR)):
            if getattr(self, name) not in allowed:
                raise UserError(f"config key '{name}' must be one of {', '.join(allowed)}; got '{getattr(self, name)}'")
        if self.optimizer == "muon":
            require_muon()
        if self.micro_batch and (self.batch_size * self.gradient_accumulation_steps) % self.micro_batch:
            raise UserError(f"micro_batch ({self.micro_batch}) must divide batch_size x gradient_accumulation_steps "
                            f"({self.batch_size * self.gradient_accumulation_steps}), the sequences of an optimizer "
                            "step on each process")
        m = self.model
        if self.block_size > m.max_position_embeddings:
            raise UserError(f"block_size ({self.block_size}) exceeds the model's context "
                            f"(model.max_position_embeddings = {m.max_position_embeddings})")
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "head_dim", "sliding_window", "sliding_window_pattern"):
            if getattr(m, name) < 1:
                raise UserError(f"config key 'model.{name}' must be at least 1, got {getattr(m, name)}")
        if m.num_attention_heads % m.num_key_value_heads:
            raise UserError(f"model.num_attention_heads ({m.num_attention_heads}) must be a multiple of "
                            f"model.num_key_value_heads ({m.num_key_value_heads})")
        for name in ("rope_local_base_freq", "rope_theta", "query_pre_attn_scalar", "rms_norm_eps",
                     "initializer_range"):
            if getattr(m, name) <= 0:
                raise UserError(f"config key 'model.{name}' must be positive, got {getattr(m, name)}")
        if m.head_dim % 2:
            raise UserError(f"model.head_dim must be even for RoPE, got {m.head_dim}")
        return self

    @property
    def sequences_per_step(self) -> int:
        """Sequences per optimizer step on one process, however micro_batch cuts them into forward passes."""
        return self.batch_size * self.gradient_accumulation_steps

    def eval_due(self, step: int) -> bool:
        """Evaluate after optimizer step `step`: every eval_interval steps and at the end."""
        return step % self.eval_interval == 0 or step == self.max_iters

    def log_due(self, step: int) -> bool:
        """Write a metrics row after `step`: every log_interval steps and with every evaluation."""
        return self.eval_due(step) or step % self.log_interval == 0

    def save_due(self, step: int) -> bool:
        """Save a checkpoint after `step`: every checkpoint_interval steps (0: never) and at the end."""
        return bool(self.checkpoint_interval and step % self.checkpoint_interval == 0) or step == self.max_iters


def _check_finite(cfg: TrainConfig) -> None:
    """Refuse nan and inf in any number: they pass every comparison-based check (nan < 0 is False) and only
    surface later, as a diverged run."""
    for prefix, obj in (("", cfg), ("model.", cfg.model)):
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise UserError(f"config key '{prefix}{f.name}' must be a finite number, got {value}")


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(key: str, value, tp, from_cli: bool):
    """Check a JSON value, or parse a command-line string, against the field's type."""
    if tp is bool:
        if from_cli and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        if isinstance(value, bool):
            return value
    elif tp is int:
        if from_cli:
            try:
                return int(value)
            except ValueError:
                pass
        elif isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if from_cli:
            try:
                return float(value)
            except ValueError:
                pass
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str and isinstance(value, str):
        return value
    raise UserError(f"config key '{key}' must be {_type_name(tp)}, got {value!r}")


def _unknown_key(key: str, known: list[str]) -> UserError:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return UserError(f"unknown config key '{key}'{hint}")


def _fields(cls) -> dict[str, type]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _apply(cfg: TrainConfig, key: str, value, from_cli: bool = False) -> None:
    train_fields, model_fields = _fields(TrainConfig), _fields(ModelConfig)
    known = [k for k in train_fields if k != "model"] + [f"model.{k}" for k in model_fields]
    if key.startswith("model."):
        name = key[len("model."):]
        if name not in model_fields:
            raise _unknown_key(key, known)
        setattr(cfg.model, name, _coerce(key, value, model_fields[name], from_cli))
    elif key in train_fields and key != "model":
        setattr(cfg, key, _coerce(key, value, train_fields[key], from_cli))
    else:
        raise _unknown_key(key, known)


def read_json(path: Path) -> dict:
    """A JSON object from a file; a syntax error names the file, line and column."""
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise UserError(f"cannot read config file {path}: {err.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"{path} line {err.lineno} column {err.colno}: malformed JSON ({err.msg})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: a config must be a JSON object")
    return data


def config_from_dict(data: dict) -> TrainConfig:
    cfg = TrainConfig()
    for key, value in data.items():
        if key == "model":
            if not isinstance(value, dict):
                raise UserError("config key 'model' must be an object of model settings")
            for mkey, mvalue in value.items():
                _apply(cfg, f"model.{mkey}", mvalue)
        else:
            _apply(cfg, key, value)
    return cfg


def parse_args(argv: list[str]) -> tuple[Path, list[tuple[str, str]]]:
    """Split `[--config FILE] [--key value | --key=value ...]` into the file and the overrides."""
    config_path, overrides, i = DEFAULT_CONFIG, [], 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--") or arg == "--":
            raise UserError(f"unexpected argument '{arg}'; use --key value")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(argv):
                raise UserError(f"--{key} needs a value")
            value, i = argv[i + 1], i + 1
        if key == "config":
            config_path = Path(value)
        else:
            overrides.append((key, value))
        i += 1
    return config_path, overrides


def load_config(argv: list[str]) -> TrainConfig:
    """The validated config from `--config FILE` (default configs/demo.json) and `--key value` overrides."""
    config_path, overrides = parse_args(argv)
    cfg = config_from_dict(read_json(config_path))
    for key, value in overrides:
        _apply(cfg, key, value, from_cli=True)
    return cfg.validate()
