"""README.md and docs/*.md name only real things: every `--key` in their code is an option of the command it is
written for, every command they run exists, and every relative link leads to a file (and heading) that exists."""

import argparse
import importlib
import importlib.util
import inspect
import re
import shlex
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TOOLS = ("prepare", "sample", "export", "plot", "bench", "plan")
# `accelerate launch`'s own options as the docs use them (before the script path)
ACCELERATE_OPTIONS = {"--config_file", "--num_processes", "--multi_gpu", "--num_machines", "--machine_rank",
                      "--main_process_ip", "--main_process_port", "--mixed_precision", "--use_fsdp"}
PLACEHOLDERS = {"--key", "--model.key"}  # "every config key can be overridden as `--key value`"
# commands of other programs, whose options are theirs: skipped
EXTERNAL = {"pip", "huggingface-cli", "tensorboard", "wandb", "#SBATCH", "export", "unshare", "kill"}
EXTERNAL_OPTIONS = {"--signal", "--logdir", "--local-dir"}  # an option of those, written alone in a span
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
SPAN = re.compile(r"`([^`]+)`")
OPTION = re.compile(r"(?<![\w-])--[A-Za-z_][\w.-]*")
PATH = re.compile(r"(?<![\w/.~-])((?:accel_train|scripts|benchmarks|configs|tests)/[\w./-]*\w\.(?:py|json|yaml|md))")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def train_options() -> set[str]:
    """The trainer's options: its command line is generated from the config's fields."""
    from accel_train.config import parser
    return {option for option in parser()._option_string_actions if option.startswith("--")}


class _Parsed(Exception):
    def __init__(self, parser: argparse.ArgumentParser):
        self.parser = parser


def _parser_options(main) -> set[str]:
    """The options of the argparse parser `main` builds: stop it at its parse call and read the parser."""
    def capture(self, *args, **kwargs):
        raise _Parsed(self)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(argparse.ArgumentParser, "parse_known_args", capture)
        mp.setattr(argparse.ArgumentParser, "parse_args", capture)
        try:
            main([]) if inspect.signature(main).parameters else main()
        except _Parsed as parsed:
            return {s for s in parsed.parser._option_string_actions if s.startswith("--")}
    raise AssertionError(f"{main} built no argparse parser")


@cache
def options_of(command: str) -> frozenset[str]:
    """`train`, a tool of accel_train (`prepare`, ...) or a script path (`scripts/gpu_check.py`)."""
    if command == "train":
        return frozenset(train_options())
    if command.endswith(".py"):
        spec = importlib.util.spec_from_file_location("_docs_" + Path(command).stem, ROOT / command)
        module, saved_path = importlib.util.module_from_spec(spec), list(sys.path)
        try:
            spec.loader.exec_module(module)
        finally:
            sys.path[:] = saved_path
        return frozenset(_parser_options(module.main))
    options = _parser_options(importlib.import_module(f"accel_train.{command}").main)
    if command in ("bench", "plan"):  # they pass the options they do not know on to the training config
        options |= train_options()
    return frozenset(options)


def all_options() -> set[str]:
    scripts = {str(p.relative_to(ROOT)) for d in ("scripts", "benchmarks") for p in (ROOT / d).glob("*.py")}
    found = set(ACCELERATE_OPTIONS | PLACEHOLDERS | EXTERNAL_OPTIONS)
    for command in ("train", *TOOLS, *sorted(scripts)):
        found |= options_of(command)
    return found


def commands(text: str) -> list[str]:
    """Every command line of the fenced blocks (continuations joined, comments dropped) and every span."""
    found = []
    for block in FENCE.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            line = " ".join(re.sub(r"(^|\s)#\s.*$", "", line).split())
            if line:
                found.append(line)
    for span in SPAN.findall(FENCE.sub("", text)):
        found.append(" ".join(span.split()))
    return found


def words(command: str) -> list[str]:
    try:
        return shlex.split(command)
    except ValueError:
        return command.split()


def problems(command: str) -> list[str]:
    """What in one command names an option or a file that does not exist."""
    w = words(command)
    while w and re.fullmatch(r"\w+=\S*", w[0]):  # VAR=value python ...
        w = w[1:]
    if w[:1] == ["srun"]:
        w = w[1:]
    if not w or w[0] in EXTERNAL:
        return []
    found = []
    groups: list[tuple[frozenset[str] | None, list[str]]] = []  # (allowed options or None: any known, words)
    if w[0] == "python":
        if w[1:2] == ["-c"] or w[1:3] == ["-m", "pytest"]:
            return []
        if w[1:2] == ["-m"] and len(w) > 2:
            module = w[2]
            if not module.startswith("accel_train."):
                return [f"{command}: runs {module}, not an accel_train module"]
            if importlib.util.find_spec(module) is None:
                return [f"{command}: no module {module}"]
            tool = module.split(".", 1)[1]
            groups.append((options_of("train" if tool == "train" else tool), w[3:]))
        elif len(w) > 1 and w[1].endswith(".py"):
            if not (ROOT / w[1]).is_file():
                return [f"{command}: no script {w[1]}"]
            groups.append((options_of("train" if w[1] == "accel_train/train.py" else w[1]), w[2:]))
        else:
            return []
    elif w[:2] == ["accelerate", "launch"]:
        script = next((i for i, x in enumerate(w) if x.endswith(".py")), len(w))
        groups.append((frozenset(ACCELERATE_OPTIONS), w[2:script]))
        if script < len(w):
            if w[script] != "accel_train/train.py":
                found.append(f"{command}: launches {w[script]}, not accel_train/train.py")
            groups.append((options_of("train"), w[script + 1:]))
    elif w[0] == "accelerate":
        return []
    else:  # an option or a fragment written alone: it must be an option of something
        groups.append((None, w))
    for allowed, part in groups:
        for i, word in enumerate(part):
            for option in OPTION.findall(word):
                option = option.split("=", 1)[0]
                if option not in (all_options() if allowed is None else allowed):
                    found.append(f"{command}: unknown option {option}")
            if i and part[i - 1] in ("--config", "--config_file") and not (ROOT / word).is_file():
                found.append(f"{command}: no file {word}")
    return found


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def link_problems(doc: Path) -> list[str]:
    found = []
    for target in LINK.findall(doc.read_text()):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        if not file.is_file():
            found.append(f"{doc.name}: link to missing {target}")
        elif anchor and file.suffix == ".md":
            headings = {slug(h) for h in re.findall(r"^#+ (.*)$", file.read_text(), re.MULTILINE)}
            if anchor not in headings:
                found.append(f"{doc.name}: link to missing heading {target}")
    return found


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_options_and_commands_exist(doc):
    text = doc.read_text()
    found = [p for command in commands(text) for p in problems(command)]
    found += [f"no file {p}" for p in PATH.findall(text) if not (ROOT / p).exists()]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc):
    assert not link_problems(doc), "\n".join(link_problems(doc))


def test_readme_links_every_doc_and_stays_short():
    readme = (ROOT / "README.md").read_text()
    for doc in DOCS[1:]:
        assert f"(docs/{doc.name})" in readme, f"README.md does not link docs/{doc.name}"
    assert len(readme.encode()) <= 10_500


def test_the_config_table_is_one_marked_block():
    text = (ROOT / "docs" / "configuration.md").read_text()
    assert text.count("<!-- config-table:start -->") == 1 and text.count("<!-- config-table:end -->") == 1
    table = text.split("<!-- config-table:start -->\n")[1].split("<!-- config-table:end -->")[0]
    assert table.startswith("| key |") and all(line.startswith("|") for line in table.splitlines())


@pytest.mark.parametrize("bad", [
    "python accel_train/train.py --nonsense_key 1",
    "python -m accel_train.sample --checkpoint out/demo --nonsense_key 1",
    "accelerate launch --nonsense_key 2 accel_train/train.py",
    "accelerate launch --num_processes 2 accel_train/train.py --model.nonsense_key 1",
    "--nonsense_key value",
    "python -m accel_train.nonsense_tool --out x",
    "python scripts/nonsense.py",
    "python accel_train/train.py --config configs/nonsense.json",
    "python -m accel_train.prepare --checkpoint out/demo",  # sample's option, not prepare's
])
def test_the_check_catches_what_does_not_exist(bad):
    assert problems(bad)


def test_the_check_reads_blocks_spans_and_links(tmp_path):
    text = "```bash\npython accel_train/train.py \\\n    --nonsense_key 1   # a comment --also_not\n```\n"
    assert [p for c in commands(text) for p in problems(c)] == [
        "python accel_train/train.py --nonsense_key 1: unknown option --nonsense_key"]
    assert [p for c in commands("see `--resume auto` and `--max_iters 5`") for p in problems(c)] == []
    doc = tmp_path / "x.md"
    doc.write_text("# Top\n[a](missing.md) [b](#top) [c](#nowhere)\n")
    assert link_problems(doc) == ["x.md: link to missing missing.md", "x.md: link to missing heading #nowhere"]


def test_benchmark_results_name_no_path_of_the_machine_they_ran_on():
    """benchmarks/RESULTS.md's commands rerun from any checkout: every path in it is relative to the repository."""
    text = (ROOT / "benchmarks" / "RESULTS.md").read_text(encoding="utf-8")
    absolute = re.findall(r"(?<![\w.~:/])/[\w.-]+/[\w./-]*", text)  # /x/y, not tokens/s nor https://
    assert not absolute, absolute
