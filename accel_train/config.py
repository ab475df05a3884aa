"""Run configuration: a typed object loaded from JSON, overridable from the command line.

Replaces the seed's module-level globals. Every key can be set in the JSON file or as
`--key value` (`--model.key value` for the model's shape); a mistake is a UserError.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path

from accel_train.errors import Parser, UserError, first_line, run_cli
from accel_train.models.gemma3 import ModelConfig
from accel_train.training.optim import require_muon
from accel_train.training.schedule import SCHEDULES
from accel_train.setting import setting

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO_ROOT / "configs" / "demo.json"
DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda")
TRACKERS = ("none", "wandb", "tensorboard")
NONFINITE = ("stop", "skip")
SWITCHES = ("auto", "on", "off")
OPTIMIZERS = ("adamw", "muon")
MUON_ADJUST_LR = ("match_rms_adamw", "original")
INT64_MAX = 2**63 - 1  # torch holds integers in 64 bits
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass
class TrainConfig:
    """Every setting of a run; each field's `setting(default, help, choices)` is its one description."""

    # data and outputs
    data_dir: str = setting("data/demo", "folder with train.bin, val.bin (or validation.bin) and meta.json")
    demo_data: bool = setting(False, "write the built-in demo corpus into data/demo if it holds no data, or an older "
                                     "version of it; any other missing data_dir is an error")
    out_dir: str = setting("out", "where metrics and checkpoints go")
    seed: int = setting(1337, "initial weights and the data stream; same seed, same run. Below 2^31, so that numpy "
                              "takes seed + each process's index", low=0, high=2**31 - 1)
    # hardware
    device: str = setting("auto", "auto: cuda when present", DEVICES)
    dtype: str = setting("auto", "auto: bf16 on GPUs that have it, fp16 on older ones, fp32 on the CPU", DTYPES)
    # optimisation; max_iters and warmup_steps count optimizer steps, not micro-batches
    learning_rate: float = setting(1e-4, "peak learning rate")
    min_lr: float = setting(1e-5, "the floor the schedule decays to; at most learning_rate", low=0)
    max_iters: int = setting(150_000, "optimizer steps in all", low=1)
    warmup_steps: int = setting(1_000, "optimizer steps of linear warmup from 0", low=0)
    batch_size: int = setting(32, "sequences per micro-batch on each process", low=1)
    block_size: int = setting(128, "tokens per sequence", low=1)
    gradient_accumulation_steps: int = setting(32, "micro-batches per optimizer step on each process; effective "
                                                   "batch = batch_size x this x processes", low=1)
    weight_decay: float = setting(0.1, "AdamW's decoupled decay, of matrices only (Muon's matrices decay too)",
                                  low=0)
    beta1: float = setting(0.9, "AdamW's first-moment decay")
    beta2: float = setting(0.95, "AdamW's second-moment decay")
    grad_clip: float = setting(0.5, "max gradient norm; 0 disables clipping", low=0)
    lr_schedule: str = setting("cosine", "after warmup: cosine to min_lr, or wsd (warmup-stable-decay): constant, "
                                         "then a straight line to min_lr. A wsd run resumed in its constant phase "
                                         "with a larger max_iters goes on as if planned that long", SCHEDULES)
    decay_fraction: float = setting(0.2, "wsd: the share of max_iters, at its end, over which the rate falls to "
                                         "min_lr")
    optimizer: str = setting("adamw", "adamw for every weight, or muon: torch.optim.Muon (PyTorch 2.9 or later) "
                                      "for the attention and MLP matrices, AdamW for the embedding and norms. Muon "
                                      "refuses float16 loss scaling; a resume keeps the checkpoint's optimizer",
                             OPTIMIZERS)
    muon_lr: float = setting(0.0, "Muon's peak rate; 0: learning_rate. Its schedule and floor follow in proportion",
                             low=0)
    muon_momentum: float = setting(0.95, "Muon's Nesterov momentum")
    muon_adjust_lr: str = setting("match_rms_adamw", "Muon's update size: match_rms_adamw scales it to AdamW's "
                                                     "(0.2 x sqrt(max(rows, cols))), so that learning_rate suits "
                                                     "both; original (Keller Jordan's) is several times smaller and "
                                                     "wants a muon_lr of about 0.02", MUON_ADJUST_LR)
    # speed; "auto" switches on what pays on this device: with CUDA on, on the CPU off
    micro_batch: int = setting(0, "sequences per forward pass; divides batch_size x gradient_accumulation_steps. "
                                  "0: batch_size on the CPU, the largest that fits on a GPU. The same windows reach "
                                  "each optimizer step whatever it is", low=0)
    compile: str = setting("auto", "torch.compile the model and its loss; auto: on with CUDA, off on the CPU",
                           SWITCHES)
    compile_mode: str = setting("default", "torch.compile's mode: reduce-overhead uses CUDA graphs, max-autotune* "
                                           "benchmark matmul kernels (minutes more to compile)", COMPILE_MODES)
    fused_adamw: str = setting("auto", "AdamW's fused kernel; auto: on with CUDA, off on the CPU", SWITCHES)
    fused_loss: bool = setting(True, "cross-entropy a chunk of tokens at a time, fused with the output projection: "
                                     "no (tokens x vocabulary) logits; model(x, y) then returns (None, loss)")
    checkpoint_layers: bool = setting(False, "recompute each layer in the backward pass: far less activation "
                                             "memory for about a third more compute")
    activation_memory_budget: float = setting(1.0, "compiled only: the share (0 to 1) of the activations the "
                                                   "backward pass keeps; inductor recomputes the cheapest of the "
                                                   "rest. 0.5 halves activation memory (benchmarks/RESULTS.md)",
                                              low=0, high=1)
    peak_tflops: float = setting(0.0, "the device's peak for the mfu in metrics.jsonl; 0: NVIDIA's figure for the "
                                      "GPU (no mfu on the CPU)", low=0)
    # evaluation, logging and checkpoints
    eval_interval: int = setting(500, "optimizer steps between evaluations", low=1)
    eval_iters: int = setting(200, "batches per split per evaluation", low=1)
    tasks: str = setting("", "multiple-choice task files (HellaSwag-style JSON Lines, comma-separated) or shipped "
                             "task names (story_endings), scored by log-likelihood; empty: none")
    task_interval: int = setting(0, "optimizer steps between scorings of the tasks (and at the end); 0: with every "
                                    "evaluation", low=0)
    log_interval: int = setting(10, "optimizer steps between log rows", low=1)
    checkpoint_interval: int = setting(1_000, "optimizer steps between checkpoints; 0: only the final one", low=0)
    keep_last: int = setting(3, "newest checkpoints kept besides best/; 0 keeps all", low=0)
    nonfinite: str = setting("stop", "on a non-finite loss or gradient norm: stop the run, or skip the update and "
                                     "count it", NONFINITE)
    spike_sigma: float = setting(0.0, "skip the update of a step whose loss or gradient norm lies more than this "
                                      "many standard deviations above the mean of the last spike_window steps "
                                      "(OLMo-core uses 6); costs one synchronization per step; 0: off", low=0)
    spike_window: int = setting(128, "steps of loss and gradient-norm history that spike_sigma compares with; "
                                     "skipping starts once half of it is filled", low=2)
    tracker: str = setting("none", "where metrics go besides metrics.jsonl", TRACKERS)
    wandb_project: str = setting("accel_train", "wandb: the project")
    run_name: str = setting("", "the tracker's run name")
    resume: str = setting("", "empty: a new run; auto: the newest checkpoint in out_dir; or a checkpoint folder")
    accept_data_change: bool = setting(False, "resume even though the data differs from the data the checkpoint "
                                              "records (token counts, sampled chunks, meta.json's dtype, "
                                              "vocab_size, tokenizer): the data stream then continues in the new "
                                              "data")
    init_from: str = setting("", "a local HuggingFace Gemma 3 folder to start from; its config.json sets the model "
                                 "shape")
    watch_interval: int = setting(100, "wandb: optimizer steps between gradient and parameter histograms; 0: never",
                                  low=0)
    wandb_tags: str = setting("", "wandb: comma-separated tags")
    sample_tokens: int = setting(200, "length of the sample printed at the end of a run; 0: none", low=0)
    plot: bool = setting(True, "draw out_dir/metrics.png at the end of a run")
    model: ModelConfig = field(default_factory=ModelConfig,
                               metadata={"help": "the model's shape, as model.KEY (defaults: Gemma 3 270M with "
                                                 "GPT-2's vocabulary)"})

    @property
    def tokens_per_step(self) -> int:
        """Tokens per optimizer step on one process."""
        return self.sequences_per_step * self.block_size

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> "TrainConfig":
        _check_numbers(self)
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
        for f in dataclasses.fields(self):
            allowed = f.metadata.get("choices")
            if allowed and getattr(self, f.name) not in allowed:
                raise UserError(f"config key '{f.name}' must be one of {', '.join(allowed)}; "
                                f"got '{getattr(self, f.name)}'")
        if self.optimizer == "muon":
            require_muon()
        if self.micro_batch and self.sequences_per_step % self.micro_batch:
            raise UserError(f"micro_batch ({self.micro_batch}) must divide batch_size x gradient_accumulation_steps "
                            f"({self.sequences_per_step}), the sequences of an optimizer "
                            "step on each process")
        m = self.model
        if self.block_size > m.max_position_embeddings:
            raise UserError(f"block_size ({self.block_size}) exceeds the model's context "
                            f"(model.max_position_embeddings = {m.max_position_embeddings})")
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

    def tasks_due(self, step: int) -> bool:
        """Score the multiple-choice tasks after `step`: every task_interval steps (or eval_interval) and at the end."""
        return bool(self.tasks) and (step % (self.task_interval or self.eval_interval) == 0 or step == self.max_iters)

    def log_due(self, step: int) -> bool:
        """Write a metrics row after `step`: every log_interval steps and with every evaluation."""
        return self.eval_due(step) or self.tasks_due(step) or step % self.log_interval == 0

    def save_due(self, step: int) -> bool:
        """Save a checkpoint after `step`: every checkpoint_interval steps (0: never) and at the end."""
        return bool(self.checkpoint_interval and step % self.checkpoint_interval == 0) or step == self.max_iters


def _check_numbers(cfg: TrainConfig) -> None:
    """Refuse nan and inf in any number (they pass every comparison-based check, as nan < 0 is False, and only
    surface later, as a diverged run), a number outside its key's declared range, and an integer beyond torch's
    64 bits."""
    for prefix, obj in (("", cfg), ("model.", cfg.model)):
        for f in dataclasses.fields(obj):
            key, value = prefix + f.name, getattr(obj, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if isinstance(value, float) and not math.isfinite(value):
                raise UserError(f"config key '{key}' must be a finite number, got {value}")
            declared = f.metadata.get("range", (None, None))
            limit = INT64_MAX if isinstance(value, int) else math.inf
            low, high = (-limit if declared[0] is None else declared[0]), min(limit, math.inf if declared[1] is None
                                                                               else declared[1])
            if not low <= value <= high:
                span = (f"lie in [{low}, {high}]" if None not in declared else
                        f"be at least {low}" if value < low else f"be at most {high}")
                raise UserError(f"config key '{key}' must {span}, got {value}")


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


def _keys() -> dict[str, tuple[dataclasses.Field, type]]:
    """Every config key (the model's as `model.KEY`) with its field and type, in the order they are declared."""
    keys = {}
    for prefix, cls in (("", TrainConfig), ("model.", ModelConfig)):
        hints = typing.get_type_hints(cls)
        keys.update({prefix + f.name: (f, hints[f.name]) for f in dataclasses.fields(cls) if hints[f.name] in
                     (bool, int, float, str)})
    return keys


def _unknown_key(key: str, known: list[str]) -> UserError:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return UserError(f"unknown config key '{key}'{hint}")


def _flatten(data: dict) -> dict:
    """A config file's keys as `key` and `model.KEY`, each value checked against its field's type."""
    keys, values = _keys(), {}
    for key, value in data.items():
        if key == "model" and not isinstance(value, dict):
            raise UserError("config key 'model' must be an object of model settings")
        for name, item in ([(f"model.{k}", v) for k, v in value.items()] if key == "model" else [(key, value)]):
            if name not in keys:
                raise _unknown_key(name, list(keys))
            values[name] = _coerce(name, item, keys[name][1], from_cli=False)
    return values


def _build(values: dict) -> TrainConfig:
    model = {key[len("model."):]: value for key, value in values.items() if key.startswith("model.")}
    return TrainConfig(**{key: value for key, value in values.items() if not key.startswith("model.")},
                       model=ModelConfig(**model))


def read_json(path: Path) -> dict:
    """A JSON object from a file; a syntax error names the file, line and column."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")  # a byte-order mark, as some editors write, is fine
    except OSError as err:
        raise UserError(f"cannot read config file {path}: {err.strerror}") from None
    except UnicodeDecodeError as err:
        raise UserError(f"config file {path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"{path} line {err.lineno} column {err.colno}: malformed JSON ({err.msg})") from None
    except (ValueError, RecursionError) as err:  # an integer of thousands of digits, arrays nested thousands deep
        raise UserError(f"{path}: malformed JSON ({first_line(err)})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: a config must be a JSON object")
    return data


def config_from_dict(data: dict) -> TrainConfig:
    return _build(_flatten(data))


class _Key(argparse.Action):
    """`--key value`, parsed by the field's type here so that a mistake is one config error, not argparse's usage."""

    def __init__(self, *args, tp=None, **kwargs):
        super().__init__(*args, nargs="?", **kwargs)
        self.tp = tp

    def __call__(self, parser, namespace, value, option_string=None):
        if value is None:
            raise UserError(f"{option_string} needs a value")
        setattr(namespace, self.dest, Path(value) if self.tp is None else _coerce(self.dest, value, self.tp, True))


def _describe(f: dataclasses.Field) -> str:
    """A key's meaning, with its choices or its declared range where it has them."""
    choices, (low, high) = f.metadata.get("choices"), f.metadata.get("range", (None, None))
    span = (f"; at least {low}" if high is None else f"; {low} to {high}") if low is not None else ""
    return f.metadata["help"] + (f"; one of {', '.join(f'`{c}`' for c in choices)}" if choices else span)


class _Formatter(argparse.HelpFormatter):
    """Shows `--key int`, not `--key [int]`: every key needs its value (`_Key` takes it optionally to say so)."""

    def _format_args(self, action, default_metavar):
        return self._metavar_formatter(action, default_metavar)(1)[0]


def parser() -> argparse.ArgumentParser:
    """The command line of the trainer, generated from the config's fields: what `--help` prints."""
    p = Parser(usage="%(prog)s [-h] [--config FILE] [--KEY VALUE ...]", formatter_class=_Formatter,
               description="Pretrain a language model. Every key can be set in the --config file or as --key value "
                           "(or --key=value); the command line overrides the file. Bool keys take true/false, "
                           "1/0 or yes/no. The defaults shown are TrainConfig's; the config file (configs/demo.json "
                           "unless --config names another) replaces many of them.",
               argument_default=argparse.SUPPRESS, allow_abbrev=False)
    # a value like -1e-3 is a number, not an option (Python 3.13's argparse knows this; 3.11's does not)
    p._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")
    p.add_argument("--config", action=_Key, metavar="FILE",
                   help=f"a JSON config, read first (default: {DEFAULT_CONFIG.relative_to(REPO_ROOT)})")
    groups = {"": p.add_argument_group("training keys"), "model.": p.add_argument_group("model keys (its shape)")}
    for key, (f, tp) in _keys().items():
        choices = f.metadata.get("choices")
        help = f"{f.metadata['help']} (default: {json.dumps(f.default)})".replace("%", "%%")
        groups["model." if key.startswith("model.") else ""].add_argument(
            f"--{key}", action=_Key, tp=tp, metavar="{" + ",".join(choices) + "}" if choices else _type_name(tp),
            help=help)
    return p


def load_config(argv: list[str]) -> TrainConfig:
    """The validated config from `--config FILE` (default configs/demo.json) and `--key value` overrides."""
    args, extras = parser().parse_known_args(argv)
    if extras:
        if extras[0].startswith("--") and extras[0] != "--":
            raise _unknown_key(extras[0][2:].partition("=")[0], list(_keys()))
        raise UserError(f"unexpected argument '{extras[0]}'; use --key value")
    overrides = vars(args)
    config_path = overrides.pop("config", DEFAULT_CONFIG)
    return _build({**_flatten(read_json(config_path)), **overrides}).validate()


def markdown_table() -> str:
    """The README's table of every key, from the same fields as `--help`, so the two cannot drift apart."""
    rows = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for key, (f, tp) in _keys().items():
        rows.append(f"| `{key}` | {_type_name(tp)} | `{json.dumps(f.default)}` | "
                    f"{_describe(f).replace('|', chr(92) + '|')} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    """`python -m accel_train.config --markdown`: the configuration table of docs/configuration.md."""
    p = Parser(prog="python -m accel_train.config", description="Print the table of every config key.")
    p.add_argument("--markdown", action="store_true", required=True, help="as a Markdown table")
    p.parse_args(argv)
    print(markdown_table())


if __name__ == "__main__":
    run_cli(main)
