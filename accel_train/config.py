"""Run configuration: a typed object loaded from JSON, overridable from the command line.

Replaces the seed's module-level globals. Every key can be set in the JSON file or as
`--key value` (`--model.key value` for the model's shape); a mistake is a UserError. Each key's
meaning and constraints are declared beside its field (declarations.py), and `validate()` only checks them.

One tier of defaults: `--help` shows the values the command would run with, that is the config
file's (configs/demo.json when no `--config` is given), and the field's own default for a key the
file leaves out. The fields' defaults stay the seed's run (Gemma 3 270M, its schedule) rather than
the demo's: every config file builds on them, and turning them into the demo's toy values would
quietly change what every existing config that leaves a key out trains. So a newcomer reads one
number, in `--help` or the table of docs/configuration.md, and that number is what the run uses.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import re
import textwrap
import typing
from dataclasses import dataclass, field
from pathlib import Path

from accel_train.errors import Parser, UserError, first_line, run_cli
from accel_train.data.mixture import Mixture, training_mixture
from accel_train.data.order import SAMPLINGS
from accel_train.data.windows import WINDOW_STARTS
from accel_train.models.gemma3 import ModelConfig
from accel_train.training.hardware import COMPILE_MODES, DEVICES, DTYPES, SWITCHES
from accel_train.training.optim import MUON_ADJUST_LR, OPTIMIZERS
from accel_train.training.schedule import SCHEDULES
from accel_train.training.tracking import TRACKERS
from accel_train.declarations import Rule, at_most, below, check, declare, describe, divides, times_below

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO_ROOT / "configs" / "demo.json"
NONFINITE = ("stop", "skip")
JSON_OBJECT_KEYS = ("data_mix",)  # str keys that a config file may also give as a JSON object
SHRINKS_PAST_ZERO = "each step would shrink the weights past zero"


def _warmup_in_wsd_decay(key: str, warmup: int, cfg: TrainConfig) -> str | None:
    if cfg.lr_schedule != "wsd" or warmup <= cfg.max_iters * (1 - cfg.decay_fraction):
        return None
    return (f"{key} ({warmup}) run into the decay, the last decay_fraction ({cfg.decay_fraction}) of max_iters "
            f"({cfg.max_iters}); lower one of them")


WARMUP_BEFORE_WSD_DECAY = Rule("with wsd, at most max_iters x (1 - decay_fraction), where the decay starts",
                               _warmup_in_wsd_decay)


@dataclass
class TrainConfig:
    """Every setting of a run; each field's `declare(...)` is its one description: meaning, range, choices, rules."""

    # data and outputs
    data_dir: str = declare("data/demo", "folder with train.bin, val.bin (or validation.bin) and meta.json")
    data_mix: str = declare("", "several data folders with weights, trained on as one stream (data_dir is then "
                                "unused): a JSON object {\"data/web\": 0.7, \"data/code\": 0.3} (in a config file, "
                                "as an object) or data/web=0.7,data/code=0.3. Weights may change on resume")
    sampling: str = declare("epoch", "the order of windows: epoch shows every window once per epoch, reshuffled each "
                                     "epoch; random draws windows with replacement (the seed's way)", SAMPLINGS)
    window_start: str = declare("any", "any: windows anywhere (every block_size tokens with sampling epoch); "
                                       "document: windows start at document starts, and every block_size tokens "
                                       "inside longer documents", WINDOW_STARTS)
    demo_data: bool = declare(False, "write the built-in demo corpus into data/demo if it holds no data, or an older "
                                     "version of it; any other missing data_dir is an error")
    out_dir: str = declare("out", "where metrics and checkpoints go")
    seed: int = declare(1337, "initial weights and the data stream; same seed, same run. Below 2^31, so that numpy "
                              "takes seed + each process's index", low=0, high=2**31 - 1)
    document_mask: str = declare("off", "attention stays inside each document of a window: a token sees only the "
                                        "earlier tokens of its own document, which begins at meta.json's bos token, "
                                        "or else at its eot_token (docs/training.md). auto: on where meta.json names "
                                        "one", SWITCHES)
    # hardware
    device: str = declare("auto", "auto: cuda when present", DEVICES)
    dtype: str = declare("auto", "auto: bf16 on GPUs that have it, fp16 on older ones, fp32 on the CPU", DTYPES)
    # optimisation; max_iters and warmup_steps count optimizer steps, not micro-batches
    learning_rate: float = declare(1e-4, "peak learning rate", above=0)
    min_lr: float = declare(1e-5, "the floor the schedule decays to", low=0,
                            rules=(at_most("learning_rate", ": the decay would raise the rate"),))
    max_iters: int = declare(150_000, "optimizer steps in all", low=1)
    warmup_steps: int = declare(1_000, "optimizer steps of linear warmup from 0", low=0,
                                rules=(below("max_iters"), WARMUP_BEFORE_WSD_DECAY))
    # The data stream draws `batch_size` sequences at a time (a stream batch); a forward pass takes `micro_batch`.
    batch_size: int = declare(32, "sequences per stream batch: the unit the data stream draws (and a resume "
                                  "counts) on each process; micro_batch sets how many go through one forward pass",
                              low=1)
    block_size: int = declare(128, "tokens per sequence", low=1,
                              rules=(at_most("model.max_position_embeddings", ", the model's longest context"),))
    gradient_accumulation_steps: int = declare(32, "stream batches per optimizer step on each process, their "
                                                   "gradients summed however micro_batch cuts them into forward "
                                                   "passes; effective batch = batch_size x this x processes", low=1)
    weight_decay: float = declare(0.1, "AdamW's decoupled decay, of matrices only (Muon's matrices decay too)",
                                  low=0, rules=(times_below("learning_rate", 1, SHRINKS_PAST_ZERO),
                                                times_below("muon_lr", 1, SHRINKS_PAST_ZERO)))
    beta1: float = declare(0.9, "AdamW's first-moment decay", low=0, below=1)
    beta2: float = declare(0.95, "AdamW's second-moment decay", low=0, below=1)
    grad_clip: float = declare(0.5, "max gradient norm; 0 disables clipping", low=0)
    lr_schedule: str = declare("cosine", "after warmup: cosine to min_lr, or wsd (warmup-stable-decay): constant, "
                                         "then a straight line to min_lr. A wsd run resumed in its constant phase "
                                         "with a larger max_iters goes on as if planned that long", SCHEDULES)
    decay_fraction: float = declare(0.2, "wsd: the share of max_iters, at its end, over which the rate falls to "
                                         "min_lr", above=0, high=1)
    optimizer: str = declare("adamw", "adamw for every weight, or muon: torch.optim.Muon (PyTorch 2.9 or later) "
                                      "for the attention and MLP matrices, AdamW for the embedding and norms. Muon "
                                      "refuses float16 loss scaling; a resume keeps the checkpoint's optimizer",
                             tuple(OPTIMIZERS))
    muon_lr: float = declare(0.0, "Muon's peak rate; 0: learning_rate. Its schedule and floor follow in proportion",
                             low=0)
    muon_momentum: float = declare(0.95, "Muon's Nesterov momentum", low=0, below=1)
    muon_adjust_lr: str = declare("match_rms_adamw", "Muon's update size: match_rms_adamw scales it to AdamW's "
                                                     "(0.2 x sqrt(max(rows, cols))), so that learning_rate suits "
                                                     "both; original (Keller Jordan's) is several times smaller and "
                                                     "wants a muon_lr of about 0.02", MUON_ADJUST_LR)
    # speed; "auto" switches on what pays on this device: with CUDA on, on the CPU off
    micro_batch: int = declare(0, "sequences per forward pass (a micro-batch). 0: batch_size on the CPU, the "
                                  "largest that fits on a GPU. The same windows reach each optimizer step whatever "
                                  "it is", low=0,
                               rules=(divides("sequences_per_step", "batch_size x gradient_accumulation_steps",
                                              ", the sequences of an optimizer step on each process", True),))
    compile: str = declare("auto", "torch.compile the model and its loss; auto: on with CUDA, off on the CPU",
                           SWITCHES)
    compile_mode: str = declare("default", "torch.compile's mode: reduce-overhead uses CUDA graphs, max-autotune* "
                                           "benchmark matmul kernels (minutes more to compile)", COMPILE_MODES)
    fused_adamw: str = declare("auto", "AdamW's fused kernel; auto: on with CUDA, off on the CPU", SWITCHES)
    fused_loss: bool = declare(True, "cross-entropy a chunk of tokens at a time, fused with the output projection: "
                                     "no (tokens x vocabulary) logits; model(x, y) then returns (None, loss)")
    checkpoint_layers: bool = declare(False, "recompute each layer in the backward pass: far less activation "
                                             "memory for about a third more compute")
    activation_memory_budget: float = declare(1.0, "compiled only: the share (0 to 1) of the activations the "
                                                   "backward pass keeps; inductor recomputes the cheapest of the "
                                                   "rest. 0.5 halves activation memory (benchmarks/RESULTS.md)",
                                              low=0, high=1)
    peak_tflops: float = declare(0.0, "the device's peak for the mfu in metrics.jsonl; 0: NVIDIA's figure for the "
                                      "GPU (no mfu on the CPU)", low=0)
    # evaluation, logging and checkpoints
    eval_interval: int = declare(500, "optimizer steps between evaluations", low=1)
    eval_iters: int = declare(200, "batches per split per evaluation", low=1)
    tasks: str = declare("", "multiple-choice task files (HellaSwag-style JSON Lines, comma-separated) or shipped "
                             "task names (story_endings), scored by log-likelihood; empty: none")
    task_interval: int = declare(0, "optimizer steps between scorings of the tasks (and at the end); 0: with every "
                                    "evaluation", low=0)
    log_interval: int = declare(10, "optimizer steps between log rows", low=1)
    checkpoint_interval: int = declare(1_000, "optimizer steps between checkpoints; 0: only the final one", low=0)
    keep_last: int = declare(3, "newest checkpoints kept besides best/; 0 keeps all", low=0)
    nonfinite: str = declare("stop", "on a non-finite loss or gradient norm: stop the run, or skip the update and "
                                     "count it", NONFINITE)
    spike_sigma: float = declare(0.0, "skip the update of a step whose loss or gradient norm lies more than this "
                                      "many standard deviations above the mean of the last spike_window steps "
                                      "(OLMo-core uses 6); costs one synchronization per step; 0: off", low=0)
    spike_window: int = declare(128, "steps of loss and gradient-norm history that spike_sigma compares with; "
                                     "skipping starts once half of it is filled", low=2)
    tracker: str = declare("none", "where metrics go besides metrics.jsonl", tuple(TRACKERS))
    wandb_project: str = declare("accel_train", "wandb: the project")
    run_name: str = declare("", "the tracker's run name")
    resume: str = declare("", "empty: a new run; auto: the newest checkpoint in out_dir; or a checkpoint folder")
    accept_data_change: bool = declare(False, "resume even though the data differs from the data the checkpoint "
                                              "records (token counts, sampled chunks, meta.json's dtype, "
                                              "vocab_size, tokenizer): the data stream then continues in the new "
                                              "data")
    init_from: str = declare("", "the weights to start from, which set the model shape: a local HuggingFace Gemma 3 "
                                 "folder (its config.json), or a checkpoint of ours or a run's out_dir (its newest), "
                                 "e.g. to fine-tune a pretrained run on conversations")
    watch_interval: int = declare(100, "wandb: optimizer steps between gradient and parameter histograms; 0: never",
                                  low=0)
    wandb_tags: str = declare("", "wandb: comma-separated tags")
    sample_tokens: int = declare(200, "length of the sample printed at the end of a run; 0: none", low=0)
    plot: bool = declare(True, "draw out_dir/metrics.png at the end of a run")
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
        """This config, once every key is within its declared constraints (declarations.py), its optimizer is
        installed and its data_mix reads."""
        check(self)
        OPTIMIZERS[self.optimizer].require()
        self.mixture()
        return self

    def mixture(self) -> Mixture:
        """The sources this config trains on: data_mix's folders, or data_dir alone (a mixture of one)."""
        return training_mixture(self.data_mix, self.data_dir)

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


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(key: str, value, tp, from_cli: bool, noun: str = "config key"):
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
    elif tp is str and isinstance(value, dict) and key in JSON_OBJECT_KEYS and not from_cli:
        return json.dumps(value)  # a key whose value a config file may write as an object
    raise UserError(f"{noun} '{key}' must be {_type_name(tp)}, got {value!r}")


def _keys(cls: type = TrainConfig, prefix: str = "") -> dict[str, tuple[dataclasses.Field, type]]:
    """Every key of a dataclass of `declare()` fields (a nested one's as `prefix.KEY`, as the model's are `model.KEY`)
    with its field and type, in the order they are declared."""
    keys, hints = {}, typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            keys.update(_keys(hints[f.name], f"{prefix}{f.name}."))
        elif hints[f.name] in (bool, int, float, str):
            keys[prefix + f.name] = f, hints[f.name]
    return keys


def _unknown_key(key: str, known: list[str], noun: str = "config key") -> UserError:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return UserError(f"unknown {noun} '{key}'{hint}")


def _defaults(cls: type) -> dict:
    """The fields' own defaults, by key."""
    return {key: f.default for key, (f, _) in _keys(cls).items()}


def _flatten(data: dict) -> dict:
    """A config file's keys as `key` and `model.KEY`, each value checked against its field's type."""
    keys, values = _keys(), {}
    for key, value in data.items():
        if key == "model" and not isinstance(value, dict):
            raise UserError("config key 'model' must be an object of model keys")
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

    def __init__(self, *args, tp=None, noun="config key", **kwargs):
        super().__init__(*args, nargs="?", **kwargs)
        self.tp, self.noun = tp, noun

    def __call__(self, parser, namespace, value, option_string=None):
        if value is None:
            raise UserError(f"{option_string} needs a value")
        setattr(namespace, self.dest, Path(value) if self.tp is None else
                _coerce(self.dest, value, self.tp, True, self.noun))


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Shows `--key int`, not `--key [int]`: every key needs its value (`_Key` takes it optionally to say so)."""

    def _format_args(self, action, default_metavar):
        return self._metavar_formatter(action, default_metavar)(1)[0]


TRAIN_DESCRIPTION = textwrap.fill(
    "Pretrain a language model. Every key can be set in the --config file or as --key value (or --key=value); the "
    "command line overrides the file. Bool keys take true/false, 1/0 or yes/no. The defaults shown are the values "
    "this command runs with: the config file's, and TrainConfig's own for a key the file leaves out. After each "
    "key's meaning come its constraints.", width=100)


def _config_file(argv: list[str]) -> Path:
    """The `--config` of a command line (the last, as argparse takes it), read before the parser is built so that
    `--help` can show its values; configs/demo.json when there is none."""
    found = DEFAULT_CONFIG
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        if arg == "--config":
            if i + 1 == len(argv) or argv[i + 1].startswith("-"):
                raise UserError("--config needs a value")
            found = Path(argv[i + 1])
        elif arg.startswith("--config="):
            found = Path(arg.partition("=")[2])
    return found


def _shown_name(path: Path) -> str:
    return str(DEFAULT_CONFIG.relative_to(REPO_ROOT) if path == DEFAULT_CONFIG else path)


def parser(shown: dict | None = None, config_file: Path = DEFAULT_CONFIG, options: type | None = None,
           prog: str | None = None, description: str = TRAIN_DESCRIPTION) -> argparse.ArgumentParser:
    """The command line generated from the config's fields (and a tool's `options` dataclass, as bench's): what
    `--help` prints. Each key shows its meaning, its constraints and, as its default, its value in `shown` (the
    config file's over the fields'; by default the bare run's, from configs/demo.json)."""
    shown = {**_defaults(TrainConfig), **_flatten(read_json(config_file))} if shown is None else shown
    p = Parser(prog=prog, usage="%(prog)s [-h] [--config FILE] [--KEY VALUE ...]", formatter_class=_Formatter,
               description=description, argument_default=argparse.SUPPRESS, allow_abbrev=False)
    # a value like -1e-3 is a number, not an option (Python 3.13's argparse knows this; 3.11's does not)
    p._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")
    p.add_argument("--config", action=_Key, metavar="FILE",
                   help=f"a JSON config, read first (default: {DEFAULT_CONFIG.relative_to(REPO_ROOT)}); the "
                        f"defaults below are {_shown_name(config_file)}'s")
    entries = []
    if options is not None:  # the tool's own keys first
        tool = p.prog.rpartition(".")[2]
        own = p.add_argument_group(f"{tool} keys")
        entries = [(own, key, f, tp, f"{tool} option") for key, (f, tp) in _keys(options).items()]
        shown = {**_defaults(options), **shown}
    sections = {"": p.add_argument_group("training keys"), "model.": p.add_argument_group("model keys (its shape)")}
    entries += [(sections[key[:key.find(".") + 1]], key, f, tp, "config key") for key, (f, tp) in _keys().items()]
    for group, key, f, tp, noun in entries:
        choices = f.metadata.get("choices")
        group.add_argument(f"--{key}", action=_Key, tp=tp, noun=noun, help=f"{describe(f)} (default: "
                           f"{json.dumps(shown[key])})".replace("%", "%%"),
                           metavar="{" + ",".join(choices) + "}" if choices else _type_name(tp))
    return p


@dataclass
class CommandLine:
    """What a command line asked for: the validated config, the file it started from, which keys were typed and
    the tool's own options (a checked instance of its dataclass, or None)."""
    config: TrainConfig
    config_file: Path
    typed: set[str]
    options: typing.Any = None


def read_command_line(argv: list[str], options: type | None = None, prog: str | None = None,
                      description: str = TRAIN_DESCRIPTION) -> CommandLine:
    """`--config FILE` (default configs/demo.json) and `--key value` overrides, and a tool's own `options` keys:
    every mistake is one line, an unknown key's with the closest known one."""
    config_file = _config_file(argv)
    from_file = _flatten(read_json(config_file))  # before --help, which shows its values: a bad file is one line
    shown = {**_defaults(TrainConfig), **from_file}
    args, extras = parser(shown, config_file, options, prog, description).parse_known_args(argv)
    tool_keys = list(_keys(options)) if options else []
    tool = (prog or "").rpartition(".")[2]  # `bench` of `python -m accel_train.bench`
    if extras:
        if extras[0].startswith("--") and extras[0] != "--":
            raise _unknown_key(extras[0][2:].partition("=")[0], tool_keys + list(_keys()),
                               f"{tool} option or config key" if options else "config key")
        raise UserError(f"unexpected argument '{extras[0]}'; use --key value")
    typed = vars(args)
    typed.pop("config", None)
    chosen = None
    if options:
        chosen = options(**{key: typed.pop(key) for key in tool_keys if key in typed})
        check(chosen, f"{tool} option")
    return CommandLine(_build({**shown, **typed}).validate(), config_file, set(typed), chosen)


def load_config(argv: list[str]) -> TrainConfig:
    """The validated config from `--config FILE` (default configs/demo.json) and `--key value` overrides."""
    return read_command_line(argv).config


def markdown_table() -> str:
    """docs/configuration.md's table of every key, from the same fields as `--help`, so the two cannot drift
    apart: the value a bare run uses (configs/demo.json's, as `--help` shows), the field's own (what a config
    file that leaves the key out gets) and the meaning with every constraint."""
    bare_run = {**_defaults(TrainConfig), **_flatten(read_json(DEFAULT_CONFIG))}
    rows = ["| key | type | bare run | if a file leaves it out | meaning and constraints |",
            "| --- | --- | --- | --- | --- |"]
    for key, (f, tp) in _keys().items():
        rows.append(f"| `{key}` | {_type_name(tp)} | `{json.dumps(bare_run[key])}` | `{json.dumps(f.default)}` | "
                    f"{describe(f, lambda c: f'`{c}`').replace('|', chr(92) + '|')} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    """`python -m accel_train.config --markdown`: the configuration table of docs/configuration.md."""
    p = Parser(prog="python -m accel_train.config", description="Print the table of every config key.")
    p.add_argument("--markdown", action="store_true", required=True, help="as a Markdown table")
    p.parse_args(argv)
    print(markdown_table())


if __name__ == "__main__":
    run_cli(main)
