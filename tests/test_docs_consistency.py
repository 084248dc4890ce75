"""The docs against the code: users copy commands, flags, `--set` keys and paths from README.md and docs/*.md.

Each test extracts one kind of reference from the docs and checks it against its source of truth: config keys
against the config schema (`build_section`'s allowed keys), command-line flags against each program's own
argparse parser (captured in-process from its real entry point, so no subprocess per program), config names
against configs/, paths and #anchors against the tree and the headings, `make` targets against the Makefile,
and run_all.sh's documented knobs against the variables the script reads. Then the documented `--help`
commands run. Every message names the doc and line of the stale reference.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import importlib
import inspect
import io
import json
import re
import runpy
import shlex
import subprocess
import sys
import warnings
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = ["README.md", "docs/TRAINING.md", "docs/SYNTHETIC.md", "docs/PERFORMANCE.md", "docs/ARCHITECTURE.md"]
SECTIONS = ("task", "model", "data", "train", "eval", "deepspeed")
# Top-level entries a doc path may start with; other relative paths (data/, outputs/, weights/) are the
# user's own files, and placeholders (<tag>, *, {a,b}) are patterns, not paths.
REPO_ROOTS = ("clipbert", "benchmarks", "docs", "tests", "configs", "csrc", "dali_pipelines")
REPO_FILES = (
    "README.md",
    "Makefile",
    "MANIFEST.in",
    "setup.py",
    "pyproject.toml",
    "requirements.txt",
    "train.py",
)
# `train.py` and `model.safetensors` are files, not the config key py of [train] or safetensors of [model]
FILE_SUFFIXES = {
    "py",
    "json",
    "jsonl",
    "md",
    "safetensors",
    "bin",
    "h5",
    "pt",
    "pth",
    "pkl",
    "png",
    "csv",
    "txt",
}
RUN_ALL = "benchmarks/gpu/run_all.sh"
# Flags of the launchers and tools the docs use around this repo's programs (deepspeed, torchrun, pip,
# tensorboard, nvcc, cuobjdump, setup.py), parsed by none of them.
LAUNCHER_FLAGS = {
    "--num_gpus",
    "--num_nodes",
    "--hostfile",
    "--master_addr",
    "--master_port",
    "--include",
    "--launcher",
    "--launcher_args",
    "--nproc_per_node",
    "--nnodes",
    "--rdzv_backend",
    "--rdzv_endpoint",
    "--logdir",
    "--no-build-isolation",
    "--no-deps",
    "--upgrade",
    "--split-compile",
    "--dump-resource-usage",
    "--name",
}


@dataclasses.dataclass(frozen=True)
class Where:
    doc: str
    line: int

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}"


# ---------------------------------------------------------------- reading the docs


@cache
def doc_text(doc: str) -> str:
    return (REPO / doc).read_text(encoding="utf-8")


@cache
def fenced_blocks(doc: str) -> tuple[tuple[str, str, int], ...]:
    """(language, body, first body line) of each ``` block."""
    blocks, lang, body, start = [], None, [], 0
    for i, line in enumerate(doc_text(doc).splitlines(), 1):
        if line.startswith("```"):
            if lang is None:
                lang, body, start = line[3:].strip(), [], i + 1
            else:
                blocks.append((lang, "\n".join(body), start))
                lang = None
        elif lang is not None:
            body.append(line)
    return tuple(blocks)


@cache
def prose_lines(doc: str) -> tuple[tuple[int, str], ...]:
    """The lines outside ``` blocks, numbered."""
    out, inside = [], False
    for i, line in enumerate(doc_text(doc).splitlines(), 1):
        if line.startswith("```"):
            inside = not inside
        elif not inside:
            out.append((i, line))
    return tuple(out)


@cache
def inline_spans(doc: str) -> tuple[tuple[str, Where], ...]:
    """Every `code span` of the prose (tables included); a span may run over a line break."""
    lines = dict(prose_lines(doc))
    text = "\n".join(lines.get(i, "") for i in range(1, len(doc_text(doc).splitlines()) + 1))
    return tuple(
        (" ".join(m.group(1).split()), Where(doc, text[: m.start()].count("\n") + 1))
        for m in re.finditer(r"`([^`]+)`", text)
    )


def shell_lines(doc: str) -> list[tuple[str, Where]]:
    """The logical lines of the shell blocks (continuations joined)."""
    out = []
    for lang, body, start in fenced_blocks(doc):
        if lang not in ("", "bash", "sh"):
            continue
        joined, first = "", None
        for k, line in enumerate(body.splitlines()):
            first = start + k if first is None else first
            if line.rstrip().endswith("\\"):
                joined += line.rstrip()[:-1] + " "
                continue
            out.append((joined + line, Where(doc, first)))
            joined, first = "", None
    return out


# ---------------------------------------------------------------- commands


@dataclasses.dataclass
class Command:
    # "module:clipbert.predict", "script:benchmarks/bench_data.py" or "sh:benchmarks/gpu/run_all.sh"
    program: str
    args: list[str]
    env: dict[str, str]
    text: str
    where: Where
    inline: bool  # quoted in the prose: may leave out required arguments (`python -m clipbert.predict`)


PYTHONS = re.compile(r"^(?:\S*/)?python(?:3(?:\.\d+)?)?$")


def _find_script(name: str) -> str | None:
    """A script path as written (`benchmarks/bench_data.py`) or by its bare name (`bench_data.py`)."""
    if name == "train.py" or (name.startswith("benchmarks/") and (REPO / name).is_file()):
        return name
    found = list(REPO.glob(f"benchmarks/**/{name}"))
    return str(found[0].relative_to(REPO)) if len(found) == 1 else None


def parse_command(text: str, where: Where, inline: bool) -> Command | None:
    """The repo program a shell line runs, with its arguments; None for anything else."""
    try:
        tokens = shlex.split(text, comments=True)
    except ValueError:  # an unbalanced quote in prose-like text
        return None
    env, i = {}, 0
    while i < len(tokens) and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", tokens[i]):
        key, value = tokens[i].split("=", 1)
        env[key] = value
        i += 1
    tokens = tokens[i:]
    if not tokens:
        return None
    head = tokens[0]
    program, rest = None, []
    if PYTHONS.match(head) and len(tokens) > 1:
        if tokens[1] == "-m" and len(tokens) > 2 and tokens[2].startswith("clipbert"):
            program, rest = f"module:{tokens[2]}", tokens[3:]
        elif tokens[1].endswith(".py") and _find_script(tokens[1]):
            program, rest = f"script:{_find_script(tokens[1])}", tokens[2:]
    elif head in ("deepspeed", "torchrun"):
        at = next((k for k, t in enumerate(tokens) if t.endswith("train.py")), None)
        if at is not None:
            program, rest = "script:train.py", tokens[at + 1 :]
    elif head in ("bash", "source") and len(tokens) > 1 and tokens[1] == RUN_ALL:
        program, rest = f"sh:{RUN_ALL}", tokens[2:]
    elif head.endswith(".py") and _find_script(head):
        program, rest = f"script:{_find_script(head)}", tokens[1:]
    if program is None:
        return None
    return Command(program, [t for t in rest if t not in ("...", "&")], env, text, where, inline)


@cache
def documented_commands() -> tuple[Command, ...]:
    out = []
    for doc in DOCS:
        lines = [(t, w, False) for t, w in shell_lines(doc)] + [(t, w, True) for t, w in inline_spans(doc)]
        for text, where, inline in lines:
            # a chain runs several commands; each part is checked on its own
            for part in re.split(r"\s(?:&&|;|\|\|)\s|;\s*$", text):
                cmd = parse_command(part, where, inline)
                if cmd is not None:
                    out.append(cmd)
    return tuple(out)


class _Captured(Exception):
    def __init__(self, parser: argparse.ArgumentParser):
        self.parser = parser


@contextlib.contextmanager
def _argv(argv: list[str]):
    old = sys.argv
    sys.argv = argv
    try:
        yield
    finally:
        sys.argv = old


def _run_entry(program: str, argv: list[str]) -> None:
    """Run a program's real entry point in-process, as `python -m X` or `python X.py` would."""
    kind, name = program.split(":", 1)
    with _argv([name, *argv]), warnings.catch_warnings():
        # runpy warns that a module another test imported is in sys.modules: running it again is the point
        warnings.filterwarnings("ignore", "'.*' found in sys.modules", RuntimeWarning)
        if kind == "module":
            runpy.run_module(name, run_name="__main__", alter_sys=True)
        else:
            sys.path.insert(0, str((REPO / name).parent))
            try:
                runpy.run_path(str(REPO / name), run_name="__main__")
            finally:
                sys.path.remove(str((REPO / name).parent))


@cache
def parser_of(program: str) -> argparse.ArgumentParser:
    """The program's own parser, taken from its first parse call: nothing after parsing runs."""

    def capture(self, *args, **kwargs):
        raise _Captured(self)

    original = argparse.ArgumentParser.parse_known_args
    argparse.ArgumentParser.parse_known_args = capture
    try:
        _run_entry(program, [])
    except _Captured as got:
        return got.parser
    finally:
        argparse.ArgumentParser.parse_known_args = original
    raise AssertionError(f"{program} never parsed its arguments")


def check_args(parser: argparse.ArgumentParser, args: list[str]) -> str | None:
    """argparse's own error for these arguments (unknown flag, bad choice, missing value), or None."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            parser.parse_args(args)
    except SystemExit as stop:
        if stop.code:
            return err.getvalue().strip().splitlines()[-1]
    return None


def python_commands() -> list[Command]:
    return [c for c in documented_commands() if not c.program.startswith("sh:")]


def test_the_docs_document_commands():
    """The extraction finds the programs the docs show (so the checks below cannot pass on nothing)."""
    programs = {c.program for c in documented_commands()}
    for expected in (
        "script:train.py",
        "module:clipbert.data.synthetic",
        "module:clipbert.predict",
        "module:clipbert.data.convert_vqa",
        "module:clipbert.data.build_frame_store",
        "module:clipbert.data.transcode",
        "module:clipbert.models.weights",
        "script:benchmarks/memory_vs_ntrain.py",
        f"sh:{RUN_ALL}",
    ):
        assert expected in programs, f"no documented command runs {expected}"


def test_documented_command_lines_parse():
    """Every flag of a documented command exists in that program's parser, with a valid value."""
    bad = []
    for cmd in python_commands():
        error = check_args(parser_of(cmd.program), cmd.args)
        if error and not (cmd.inline and "arguments are required" in error):
            bad.append(f"{cmd.where}: {cmd.text.strip()!r}: {error}")
    assert not bad, "\n".join(bad)


def _all_flags() -> set[str]:
    flags = set(LAUNCHER_FLAGS) | {"--dry-run"}
    for program in {c.program for c in python_commands()} | {"script:benchmarks/demo_diagnosis.py"}:
        flags |= set(parser_of(program)._option_string_actions)
    return flags


def test_flags_named_in_prose_exist():
    """A `--flag` written in the prose belongs to some documented program (or a launcher's flags)."""
    known, bad = _all_flags(), []
    for doc in DOCS:
        for span, where in inline_spans(doc):
            for flag in re.findall(r"(?<![\w-])--[a-z][\w-]*", span):
                if flag not in known:
                    bad.append(f"{where}: {flag} (in `{span}`)")
    assert not bad, "no program takes:\n" + "\n".join(bad)


# ---------------------------------------------------------------- config keys


@cache
def allowed_keys() -> dict[str, set[str]]:
    from clipbert.data.config import DataConfig
    from clipbert.models.config import ClipBertConfig
    from clipbert.train import config as C

    names = lambda cls: {f.name for f in dataclasses.fields(cls)}  # noqa: E731
    model = names(ClipBertConfig) | {f.name for f in dataclasses.fields(C.ModelSection)} - {"overrides"}
    return {
        "task": names(C.TaskConfig),
        "model": model,
        "data": names(DataConfig),
        "train": names(C.TrainConfig),
        "eval": names(C.EvalConfig),
    }


KEY = re.compile(
    r"(?<![\w./-])(task|model|data|train|eval|deepspeed)\.([a-z_][a-z0-9_]*)((?:\.[a-z_][a-z0-9_]*)*)(?![\w(-])"
)


def documented_keys() -> list[tuple[str, str, str, Where]]:
    """(section, key, deeper keys, where) of each `section.key` in the docs, file names and calls excepted."""
    out = []
    for doc in DOCS:
        texts = [(line, Where(doc, i)) for i, line in prose_lines(doc)]
        texts += [(t, w) for t, w in shell_lines(doc)]
        for text, where in texts:
            for m in KEY.finditer(text):
                section, key, deeper = m.groups()
                if key in FILE_SUFFIXES or deeper[1:] in FILE_SUFFIXES:  # train.py, model.safetensors
                    continue
                out.append((section, key, deeper, where))
    return out


ERROR_EXAMPLE = re.compile(r"`--set ([^`]+)` stops with\s+`([^`]+)`")


@cache
def error_examples() -> tuple[tuple[str, str, Where], ...]:
    """(assignment, documented message, where) of the docs' examples of a bad `--set`."""
    out = []
    for doc in DOCS:
        text = doc_text(doc)
        for m in ERROR_EXAMPLE.finditer(text):
            out.append((m.group(1), m.group(2), Where(doc, text[: m.start()].count("\n") + 1)))
    return tuple(out)


def test_documented_error_examples_fail_as_documented():
    """The docs' examples of a bad --set are refused, with the message the docs quote."""
    from clipbert.train import config as C

    assert error_examples()
    for assignment, message, where in error_examples():
        with pytest.raises(C.ConfigError) as err:
            C.load("ds_synthetic.json", [assignment])
        assert str(err.value).startswith(message.removesuffix("...").rstrip()), f"{where}: {err.value}"


def test_documented_config_keys_exist():
    """Every `section.key` the docs name (in --set, prose and tables) is a key the schema accepts."""
    keys = documented_keys()
    assert len(keys) > 50  # the docs name many keys; an extraction that finds none must not pass
    allowed, bad = allowed_keys(), []
    wrong_on_purpose = {a.split("=")[0] for a, _, _ in error_examples()}
    for section, key, deeper, where in keys:
        if section == "deepspeed" or f"{section}.{key}" in wrong_on_purpose:
            continue  # DeepSpeed's own keys: test_documented_set_overrides_load parses them
        if key not in allowed[section]:
            bad.append(f"{where}: {section}.{key}{deeper}")
    assert not bad, "unknown config keys:\n" + "\n".join(bad)


def _set_values(args: list[str]) -> list[str]:
    return [args[k + 1] for k, t in enumerate(args[:-1]) if t == "--set"]


def load_error(config: str, assignments: list[str]) -> str | None:
    """The ConfigError of loading config with these --set values, or None. A missing file is no error: the
    docs point at weights and checkpoints the reader has (`model.init_cnn_from=weights/R-50.pkl`)."""
    from clipbert.train import config as C

    try:
        C.load(config, assignments)
    except C.ConfigError as err:
        return None if "no such file" in str(err) or "no config.json" in str(err) else str(err)
    return None


def test_documented_set_overrides_load():
    """Each documented trainer command's --config with its --set values loads (keys, values, DeepSpeed)."""
    bad, seen = [], 0
    for cmd in python_commands():
        if cmd.program not in ("script:train.py", "module:clipbert.demo") or not _set_values(cmd.args):
            continue
        seen += 1
        config = cmd.args[cmd.args.index("--config") + 1] if "--config" in cmd.args else "ds_synthetic.json"
        if error := load_error(config, _set_values(cmd.args)):
            bad.append(f"{cmd.where}: {cmd.text.strip()!r}: {error}")
    assert seen > 5
    assert not bad, "\n".join(bad)


def test_set_overrides_in_prose_load():
    """A `--set section.key=value` quoted in the prose loads on the synthetic config."""
    bad, seen = [], 0
    for doc in DOCS:
        for span, where in inline_spans(doc):
            for assignment in re.findall(r"--set\s+([^\s\"']+=[^\s\"']+)", span):
                if assignment in {a for a, _, _ in error_examples()} or assignment == "section.key=value":
                    continue  # the examples of a bad --set, and the syntax itself
                seen += 1
                if error := load_error("ds_synthetic.json", [assignment]):
                    bad.append(f"{where}: --set {assignment}: {error}")
    assert seen > 5
    assert not bad, "\n".join(bad)


# ---------------------------------------------------------------- configs, paths, anchors, make targets


def test_documented_configs_exist():
    """`--config NAME` of every documented command, and every `ds_*` config named in the prose, is shipped."""
    shipped = {p.stem for p in (REPO / "configs").glob("*.json")}
    named = [
        (cmd.args[k + 1], cmd.where)
        for cmd in documented_commands()
        for k, token in enumerate(cmd.args[:-1])
        if token == "--config"
    ]
    named += [(n, w) for doc in DOCS for span, w in inline_spans(doc) for n in re.findall(r"\bds_\w+", span)]
    assert len(named) > 10
    bad = [
        f"{where}: {name}" for name, where in named if Path(name).name.removesuffix(".json") not in shipped
    ]
    assert not bad, "not in configs/:\n" + "\n".join(bad)


PATH = re.compile(
    rf"(?<![\w./-])((?:{'|'.join(REPO_ROOTS)})/[\w./-]*|(?:{'|'.join(map(re.escape, REPO_FILES))}))"
)


def _repo_paths(text: str) -> list[str]:
    out = []
    for m in PATH.finditer(text):
        path = m.group(1).rstrip(".")
        nxt = text[m.end() : m.end() + 1]
        if nxt in "<*{" and nxt:  # a pattern: benchmarks/results/<tag>.json
            continue
        out.append(path)
    return out


def test_documented_paths_exist():
    """Paths in backticks, links and prose exist; `file.py: name` names something defined in that file."""
    bad, seen = [], 0
    for doc in DOCS:
        texts = [(line, Where(doc, i)) for i, line in prose_lines(doc)]
        texts += [(body, Where(doc, start)) for _, body, start in fenced_blocks(doc)]
        for text, where in texts:
            for path in _repo_paths(text):
                seen += 1
                if not (REPO / path).exists():
                    bad.append(f"{where}: {path}")
        for span, where in inline_spans(doc):
            m = re.fullmatch(r"([\w./-]+\.\w+): (\w+)", span)  # `clipbert/data/loader.py: obey_sigterm...`
            if m and (REPO / m.group(1)).is_file() and m.group(2) not in (REPO / m.group(1)).read_text():
                bad.append(f"{where}: {m.group(2)} is not in {m.group(1)}")
    assert seen > 50
    assert not bad, "missing:\n" + "\n".join(bad)


def test_cited_result_files_exist():
    """A result file cited by its bare name (`ops_cpu_2026-11-27.json`) is in benchmarks/results/."""
    results = REPO / "benchmarks/results"
    bad, seen = [], 0
    for doc in DOCS:
        for span, where in inline_spans(doc):
            for name in re.findall(
                r"(?<![\w/.-])([\w.-]+_20\d\d-\d\d-\d\d[\w.-]*\.(?:json|md|png|csv))", span
            ):
                seen += 1
                if not (results / name).is_file():
                    bad.append(f"{where}: {name}")
            for stem in re.findall(r"(?<![\w/.-])([\w-]+_20\d\d-\d\d-\d\d[\w-]*)\.\{([\w,]+)\}", span):
                for ext in stem[1].split(","):
                    seen += 1
                    if not (results / f"{stem[0]}.{ext}").is_file():
                        bad.append(f"{where}: {stem[0]}.{ext}")
    assert seen > 20
    assert not bad, "not in benchmarks/results/:\n" + "\n".join(bad)


def github_anchor(heading: str) -> str:
    """GitHub's heading id: lower case, punctuation dropped (hyphens, underscores kept), spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(doc: str) -> set[str]:
    return {github_anchor(line.lstrip("#")) for _, line in prose_lines(doc) if re.match(r"#{1,6} ", line)}


def test_links_and_anchors_resolve():
    bad, seen = [], 0
    for doc in DOCS:
        for i, line in prose_lines(doc):
            for target in re.findall(r"\]\(([^)\s]+)\)", line):
                if re.match(r"https?://", target):
                    continue
                seen += 1
                path, _, anchor = target.partition("#")
                linked = (REPO / doc).parent / path if path else REPO / doc
                if not linked.exists():
                    bad.append(f"{doc}:{i}: {target}: no such file")
                elif anchor and anchor not in anchors(str(linked.resolve().relative_to(REPO))):
                    bad.append(f"{doc}:{i}: {target}: no heading #{anchor}")
    assert seen > 3
    assert not bad, "\n".join(bad)


def test_make_targets_exist():
    makefile = (REPO / "Makefile").read_text()
    targets = set(re.findall(r"^([\w-]+):", makefile, re.M))
    bad, seen = [], 0
    for doc in DOCS:
        texts = [(s, w) for s, w in inline_spans(doc)] + [(t, w) for t, w in shell_lines(doc)]
        for text, where in texts:
            for target in re.findall(r"(?:^|&&\s*|;\s*)make ([a-z][\w-]*)", text):
                seen += 1
                if target not in targets:
                    bad.append(f"{where}: make {target}")
    assert seen > 5
    assert not bad, "not a Makefile target:\n" + "\n".join(bad)


# ---------------------------------------------------------------- benchmarks/gpu/run_all.sh


def _run_all_variables() -> set[str]:
    """The variables run_all.sh reads (`$NAME`, `${NAME:-...}`) or sets for its steps (`export NAME=`)."""
    script = (REPO / RUN_ALL).read_text()
    return set(re.findall(r"\$\{?([A-Z_][A-Z0-9_]*)", script)) | set(
        re.findall(r"\b([A-Z_][A-Z0-9_]*)=", script)
    )


def run_all_settings() -> list[tuple[dict[str, str], Where]]:
    """The variables each documented run_all.sh call sets, and PERFORMANCE.md's `NAME=value ...` spans."""
    out = [(c.env, c.where) for c in documented_commands() if c.program == f"sh:{RUN_ALL}"]
    for span, where in inline_spans("docs/PERFORMANCE.md"):
        try:
            tokens = shlex.split(span)
        except ValueError:
            continue
        if tokens and all(re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", t) for t in tokens):
            out.append((dict(t.split("=", 1) for t in tokens), where))
    return out


# Documented next to run_all.sh's knobs but read by the code it runs.
READ_ELSEWHERE = {"CLIPBERT_NLL_KERNEL": "clipbert/ops/_backend.py"}


def test_run_all_knobs_are_read_by_the_script():
    """Each variable the docs set for run_all.sh, or name in PERFORMANCE.md, is one the script reads."""
    known, bad = _run_all_variables(), []
    commands = [c for c in documented_commands() if c.program == f"sh:{RUN_ALL}"]
    assert len(commands) > 3
    bad += [f"{c.where}: {a}" for c in commands for a in c.args if a != "--dry-run"]
    for env, where in run_all_settings():
        bad += [f"{where}: {var}" for var in env if var not in known and var not in READ_ELSEWHERE]
    for span, where in inline_spans("docs/PERFORMANCE.md"):
        for var in re.findall(r"\b([A-Z][A-Z0-9]*_[A-Z0-9_]+)\b", span):
            if var in READ_ELSEWHERE:
                assert var in (REPO / READ_ELSEWHERE[var]).read_text(), var
            elif var not in known:
                bad.append(f"{where}: {var}")
    assert not bad, f"not read by {RUN_ALL}:\n" + "\n".join(bad)


def test_run_all_knob_values_are_valid():
    """RUN_STEPS names steps, FIG5_PANELS panels, ABLATION_STEPS ladder steps, TESTS files; flags parse."""
    from clipbert.ops._backend import NLL_KERNELS
    from clipbert.perf.paths import ablation_ladder

    steps = set(re.findall(r"\bwant (\w+)", (REPO / RUN_ALL).read_text()))
    ladder = {o.name for o in ablation_ladder()}
    bench_data = parser_of("script:benchmarks/bench_data.py")
    fig5 = parser_of("script:benchmarks/memory_vs_ntrain.py")
    bad, settings = [], run_all_settings()
    assert len(settings) > 5
    for env, where in settings:
        bad += [f"{where}: RUN_STEPS {s}" for s in env.get("RUN_STEPS", "").split() if s not in steps]
        bad += [f"{where}: FIG5_PANELS {p}" for p in env.get("FIG5_PANELS", "") if p not in "abcd"]
        bad += [
            f"{where}: ABLATION_STEPS {s}" for s in env.get("ABLATION_STEPS", "").split() if s not in ladder
        ]
        bad += [f"{where}: TESTS {t}" for t in env.get("TESTS", "").split() if not (REPO / t).exists()]
        data_args = ["--device", "cpu", *shlex.split(env.get("DATA_ARGS", ""))]
        if "DATA_ARGS" in env and (err := check_args(bench_data, data_args)):
            bad.append(f"{where}: DATA_ARGS: {err}")
        if "ABLATION_PROFILE" in env and (err := check_args(fig5, shlex.split(env["ABLATION_PROFILE"]))):
            bad.append(f"{where}: ABLATION_PROFILE: {err}")
        for assignment in _set_values(shlex.split(env.get("TRAIN_SET", ""))):
            if error := load_error("ds_synthetic.json", [assignment]):
                bad.append(f"{where}: TRAIN_SET {assignment}: {error}")
        if env.get("CLIPBERT_NLL_KERNEL", "auto") not in NLL_KERNELS:
            bad.append(f"{where}: CLIPBERT_NLL_KERNEL {env['CLIPBERT_NLL_KERNEL']} (not in {NLL_KERNELS})")
    assert not bad, "\n".join(bad)


# ---------------------------------------------------------------- running the cheap documented commands


def test_documented_help_runs(capsys):
    """`--help` of every documented Python program runs through its real entry point and exits 0."""
    for program in sorted({c.program for c in python_commands()}):
        with pytest.raises(SystemExit) as stop:
            _run_entry(program, ["--help"])
        out = capsys.readouterr().out
        assert stop.value.code in (0, None), f"{program} --help exited {stop.value.code}"
        assert "usage:" in out, f"{program} --help printed no usage"


def test_synthetic_help_as_a_process():
    """One documented entry point as a user runs it, in its own interpreter (the others run in-process above;
    `python train.py --help` alone takes 5-10 s here, importing torch, DeepSpeed and transformers first)."""
    out = subprocess.run(
        [sys.executable, "-m", "clipbert.data.synthetic", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert all(flag in out.stdout for flag in ("--out", "--num-videos", "--codec", "--size", "--workers"))


def test_documented_python_imports():
    """`from X import a, b` lines in the docs' Python blocks import, so the APIs they show exist."""
    bad, seen = [], 0
    for doc in DOCS:
        for lang, body, start in fenced_blocks(doc):
            if lang != "python":
                continue
            for k, line in enumerate(body.splitlines()):
                m = re.match(r"from ([\w.]+) import (.+)", line.strip())
                if not m:
                    continue
                module = __import__(m.group(1), fromlist=["_"])
                for name in (n.strip() for n in m.group(2).split("#")[0].split(",")):
                    seen += 1
                    if not hasattr(module, name):
                        bad.append(f"{doc}:{start + k}: {m.group(1)}.{name}")
    assert seen > 5
    assert not bad, "\n".join(bad)


# ---------------------------------------------------------------- names of code


def _resolve(dotted: str):
    """The object a dotted name `clipbert.a.b.c` names: the longest importable module, then attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


def test_documented_clipbert_names_resolve():
    """`clipbert.x.y` in the prose names a module or object that exists (`clipbert.ops.set_nll_kernel`)."""
    bad, seen = [], 0
    for doc in DOCS:
        for span, where in inline_spans(doc):
            for name in re.findall(r"(?<![\w/.])(clipbert(?:\.\w+)+)(?![\w/])", span):
                if name.split(".")[-1] in FILE_SUFFIXES:
                    continue
                seen += 1
                try:
                    _resolve(name)
                except (ImportError, AttributeError) as err:
                    bad.append(f"{where}: {name}: {err}")
    assert seen > 10
    assert not bad, "\n".join(bad)


def test_names_said_to_be_in_a_file_are_there():
    """A "`NAME` in `path`" of the prose: the file defines or mentions NAME."""
    bad, seen = [], 0
    for doc in DOCS:
        text = "\n".join(line for _, line in prose_lines(doc))
        for name, path in re.findall(r"`(\w+)` in `([\w./-]+\.\w+)`", text):
            if not (REPO / path).is_file():
                continue  # a bare file name; test_documented_paths_exist checks written paths
            seen += 1
            if not re.search(rf"\b{name}\b", (REPO / path).read_text()):
                bad.append(f"{doc}: {name} is not in {path}")
    assert seen > 3
    assert not bad, "\n".join(bad)


def test_documented_flag_choices_exist():
    """`--flag a|b|c` in the prose: each listed value is one of that flag's choices."""
    actions = {}
    for program in {c.program for c in python_commands()}:
        for flag, action in parser_of(program)._option_string_actions.items():
            if action.choices:
                actions.setdefault(flag, []).append((program, action))
    bad, seen = [], 0
    for doc in DOCS:
        for span, where in inline_spans(doc):
            for flag, values in re.findall(r"(--[\w-]+)[ =](\w+(?:\|\w+)+)", span):
                if flag not in actions:
                    continue  # a launcher's flag (`--launcher pdsh|openmpi|slurm`)
                seen += 1
                for value in values.split("|"):
                    if not any(value in action.choices for _, action in actions[flag]):
                        bad.append(f"{where}: {flag} {value}")
    assert seen > 2
    assert not bad, "not a choice:\n" + "\n".join(bad)


def test_dataclass_fields_named_in_prose_exist():
    """`DataConfig.dali_trim`, `ClipBertConfig.x`, `TrainConfig.x` in the prose are fields of that class."""
    from clipbert.data.config import DataConfig
    from clipbert.models.config import ClipBertConfig
    from clipbert.train import config as C

    classes = {"DataConfig": DataConfig, "ClipBertConfig": ClipBertConfig}
    classes |= {n: getattr(C, n) for n in ("TaskConfig", "TrainConfig", "EvalConfig", "ModelSection")}
    bad, seen = [], 0
    for doc in DOCS:
        for span, where in inline_spans(doc):
            for cls, attr in re.findall(rf"\b({'|'.join(classes)})\.(\w+)", span):
                seen += 1
                if not hasattr(classes[cls], attr) and attr not in {
                    f.name for f in dataclasses.fields(classes[cls])
                }:
                    bad.append(f"{where}: {cls}.{attr}")
    assert seen > 2
    assert not bad, "\n".join(bad)


# ---------------------------------------------------------------- stated values: the config table, defaults


def _table_rows(doc: str, header_start: str) -> list[tuple[list[str], Where]]:
    rows, inside = [], False
    for i, line in prose_lines(doc):
        if line.startswith(header_start):
            inside = True
        elif inside and line.startswith("|") and not line.startswith("|---"):
            rows.append(([c.strip() for c in line.strip("|").split("|")], Where(doc, i)))
        elif inside and not line.startswith("|"):
            break
    return rows


def _number(text: str) -> float:
    return float(text.replace(",", ""))


def test_training_md_config_table_matches_the_configs():
    """docs/TRAINING.md's table of configs: Ntrain x T, L, Ntest, epochs (or steps), batch x accum, lrs."""
    from clipbert.train import config as C

    rows = _table_rows("docs/TRAINING.md", "| config | task |")
    assert len(rows) >= 10
    bad = []
    for (name_cell, _, clips, epochs, batch, lr), where in rows:
        # `ds_tgif_action / _transition / _frameqa` with `55 / 15 / 15`: one row for three configs
        first, *more = [n.strip() for n in name_cell.split("/")]
        names = [first] + [first.rsplit("_", 1)[0] + m for m in more]
        epoch_cells = [e.strip() for e in epochs.split("/")] if "/" in epochs else [epochs] * len(names)
        for name, epoch_cell in zip(names, epoch_cells):
            cfg = C.load(name)
            t, d = cfg.train, cfg.data
            got, want = [], []
            if m := re.match(r"(\d+) x (\d+)", clips):
                got += [d.num_clips, d.frames_per_clip]
                want += [int(m[1]), int(m[2])]
            for key, value in re.findall(r"\b(L|Ntest)=(\d+)", clips):
                got.append(d.image_size if key == "L" else d.num_test_clips)
                want.append(int(value))
            if m := re.fullmatch(r"([\d,]+) steps", epoch_cell):
                got.append(t.max_steps)
                want.append(_number(m[1]))
            elif epoch_cell != "-":
                got.append(t.epochs)
                want.append(_number(epoch_cell))
            if m := re.fullmatch(r"(\d+) x (\d+)", batch):
                got += [t.batch_size, t.grad_accum]
                want += [int(m[1]), int(m[2])]
            if lr != "-":
                rates = re.fullmatch(r"([\d.e-]+)(?:, CNN ([\d.e-]+))?", lr)
                got += [t.lr, t.cnn_lr]
                want += [float(rates[1]), float(rates[2] or rates[1])]
            if got != want:
                bad.append(f"{where}: {name}: the table says {want}, the config has {got}")
    assert not bad, "\n".join(bad)


def test_stated_defaults_match_the_code():
    """A "`key` (default V)" of the prose: the config field's, the flag's or the Makefile's default is V."""
    from clipbert.data.config import DataConfig
    from clipbert.train import config as C

    makefile = (REPO / "Makefile").read_text()
    flag_defaults: dict[str, set] = {}
    for program in {c.program for c in python_commands()}:
        for flag, action in parser_of(program)._option_string_actions.items():
            # a default resolved after parsing (None in the parser) is stated in the help: "default 32 (...)"
            stated = re.findall(r"default:? ([\w.]+)", action.help or "") if action.default is None else []
            flag_defaults.setdefault(flag, set()).update([str(action.default), *stated])
    allowed, bad, seen = allowed_keys(), [], 0
    classes = {"data": DataConfig, "train": C.TrainConfig, "eval": C.EvalConfig, "task": C.TaskConfig}
    for doc in DOCS:
        text = "\n".join(line for _, line in prose_lines(doc))
        for name, value in re.findall(r"`([\w.-]+)`[^`(]{0,20}\(default `?([\w.;+]+)`?", text):
            seen += 1
            if name.startswith("--"):
                if not any(_same(value, d) for d in flag_defaults.get(name, ())):
                    bad.append(f"{doc}: {name} (default {value}): the parsers say {flag_defaults.get(name)}")
            elif "." in name and name.split(".")[0] in classes:
                section, key = name.split(".", 1)
                assert key in allowed[section], name
                default = {f.name: f.default for f in dataclasses.fields(classes[section])}[key]
                if not _same(value, str(default)):
                    bad.append(f"{doc}: {name} (default {value}): the code says {default}")
            elif re.fullmatch(r"[A-Z_]+", name):
                if not re.search(rf"^{name} \?= {re.escape(value)}$", makefile, re.M):
                    bad.append(f"{doc}: {name} (default {value}): not the Makefile's default")
            else:
                seen -= 1
    assert seen >= 6
    assert not bad, "\n".join(bad)


def _same(doc_value: str, code_value: str) -> bool:
    try:
        return float(doc_value) == float(code_value)
    except ValueError:
        return doc_value == code_value


# ---------------------------------------------------------------- the APIs of docs/ARCHITECTURE.md

# Where the names of the docs' Python blocks live (the modules each section of ARCHITECTURE.md documents).
API_MODULES = (
    "clipbert.ops",
    "clipbert.models",
    "clipbert.data.synthetic",
    "clipbert.data.config",
    "clipbert.data.datasets",
    "clipbert.data.loader",
    "clipbert.data.bad_input",
    "clipbert.train.data",
    "clipbert.train.tasks",
    "clipbert.train.export",
    "clipbert.predict.cli",
    "clipbert.predict.inputs",
    "clipbert.predict.loading",
    "clipbert.predict.scoring",
    "clipbert.perf.paths",
    "clipbert.perf.profile",
)


def _calls(code: str) -> list[tuple[str, str]]:
    """(dotted callee, argument text) of each call in a line, nested calls included."""
    out = []
    for m in re.finditer(r"([A-Za-z_][\w.]*)\(", code):
        depth, k = 1, m.end()
        while k < len(code) and depth:
            depth += {"(": 1, ")": -1}.get(code[k], 0)
            k += 1
        if not depth:
            out.append((m.group(1), code[m.end() : k - 1]))
    return out


def _api_namespace() -> dict:

    from clipbert.data.bad_input import BadInputTracker
    from clipbert.models import ClipBert
    from clipbert.train import tasks
    from clipbert.train.data import TaskData

    names = {}
    for module in API_MODULES:
        for key, value in vars(importlib.import_module(module)).items():
            if callable(value) and not key.startswith("_"):
                names.setdefault(key, value)
    # what the blocks call methods on: instances (RECEIVERS) and the tasks module
    names |= {"model": ClipBert, "data": TaskData, "tracker": BadInputTracker, "tasks": tasks}
    return names


RECEIVERS = ("model", "data", "tracker")  # instances in the blocks: their methods are called bound


class _Bound:
    """A method as an instance calls it: its signature without self (`model(...)` is ClipBert.forward)."""

    def __init__(self, function):
        self.__signature__ = _unbound(function)


def _callee(names: dict, dotted: str):
    head, *attrs = dotted.split(".")
    if head not in names:
        return None
    obj = names[head]
    for attr in attrs:
        obj = getattr(obj, attr)
    if head in RECEIVERS and not attrs:
        return _Bound(obj.forward)
    return _Bound(obj) if _is_method(obj) else obj


def _is_method(obj) -> bool:
    """A function taken from its class (`ClipBert.score`), which an instance calls without self."""
    return inspect.isfunction(obj) and next(iter(inspect.signature(obj).parameters), None) == "self"


def _unbound(function):

    params = list(inspect.signature(function).parameters.values())
    return inspect.Signature(params[1:] if params and params[0].name == "self" else params)


def _check_call(function, args: str) -> str | None:
    """None when the documented call (`f(a, b=1)`) or signature (`f(x: int, *, y=None) -> T`) fits."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return None
    if inspect.isclass(function) and "self" in signature.parameters:
        signature = _unbound(function.__init__)
    elided = "..." in args  # `ClipBert.score(..., attention_mask=None)`: only the keywords are shown
    args = args.replace("...", "None")
    try:
        call = ast.parse(f"f({args})", mode="eval").body
    except SyntaxError:
        call = None
    if call is not None:
        if any(isinstance(a, ast.Starred) for a in call.args) or any(k.arg is None for k in call.keywords):
            return None
        if elided:
            params = signature.parameters
            unknown = [k.arg for k in call.keywords if k.arg not in params]
            return f"no parameter {unknown[0]!r} in {signature}" if unknown else None
        try:
            signature.bind(*[None] * len(call.args), **{k.arg: None for k in call.keywords})
        except TypeError as err:
            return str(err)
        return None
    try:
        declared = ast.parse(f"def f({args}): pass").body[0].args
    except SyntaxError:
        return None  # pseudo-code
    params = signature.parameters
    has_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())
    for a in declared.posonlyargs + declared.args + declared.kwonlyargs:
        if a.arg not in params and not has_kwargs:
            return f"no parameter {a.arg!r} in {signature}"
    for a in declared.kwonlyargs:
        if a.arg in params and params[a.arg].kind is params[a.arg].POSITIONAL_ONLY:
            return f"{a.arg!r} is positional-only in {signature}"
    return None


def _statements(body: str) -> list[tuple[str, int]]:
    """The code of a block's lines, comments dropped, a call left open joined with its next lines."""
    out, buffer, first = [], "", 0
    for k, line in enumerate(body.splitlines()):
        code = line.split("#")[0].rstrip()
        if code.lstrip().startswith(("from ", "import ")):
            continue
        buffer, first = (buffer + " " + code.strip(), first) if buffer else (code, k)
        if buffer.count("(") <= buffer.count(")"):
            out.append((buffer, first))
            buffer = ""
    return out


def test_documented_python_calls_fit_the_signatures():
    """Each call or signature shown in the docs' Python blocks fits the function's real signature."""
    names, bad, seen = _api_namespace(), [], 0
    for doc in DOCS:
        for lang, body, start in fenced_blocks(doc):
            if lang != "python":
                continue
            for code, k in _statements(body):
                for dotted, args in _calls(code):
                    try:
                        function = _callee(names, dotted)
                    except AttributeError as err:
                        bad.append(f"{doc}:{start + k}: {dotted}: {err}")
                        continue
                    if function is None:
                        continue
                    seen += 1
                    if error := _check_call(function, args):
                        bad.append(f"{doc}:{start + k}: {dotted}({args}): {error}")
    for (
        doc
    ) in DOCS:  # and the calls quoted in the prose: `clipbert.data.tokenizer.build_tokenizer(path=None)`
        for span, where in inline_spans(doc):
            if not (m := re.fullmatch(r"([A-Za-z_][\w.]*)\((.*)\)", span)):
                continue
            dotted, args = m.groups()
            function = _resolve(dotted) if dotted.startswith("clipbert.") else _callee(names, dotted)
            if function is not None:
                seen += 1
                if _is_method(function):
                    function = _Bound(function)
                if error := _check_call(function, args):
                    bad.append(f"{where}: {span}: {error}")
    assert seen > 30
    assert not bad, "\n".join(bad)


# ---------------------------------------------------------------- the synthetic benchmark's documented layout


def _expand(pattern: str) -> list[str]:
    """`msrvtt_ret_{train,val,test}.jsonl` -> its three names."""
    m = re.search(r"\{([\w,]+)\}", pattern)
    if not m:
        return [pattern]
    return [
        n for part in m.group(1).split(",") for n in _expand(pattern[: m.start()] + part + pattern[m.end() :])
    ]


def test_synthetic_command_writes_the_documented_layout(tmp_path, capsys):
    """docs/SYNTHETIC.md's tiny command runs (its --out moved under tmp_path), and what it writes is
    docs/ARCHITECTURE.md's layout: every annotation file listed is written and every written one listed,
    with the documented fields."""
    tiny = next(
        c for c in documented_commands() if c.program == "module:clipbert.data.synthetic" and "tiny" in c.args
    )
    args = list(tiny.args)
    args[args.index("--out") + 1] = str(tmp_path)
    _run_entry(tiny.program, args)
    capsys.readouterr()
    layout = next(body for lang, body, _ in fenced_blocks("docs/ARCHITECTURE.md") if body.startswith("DIR/"))
    listed, bad = set(), []
    for line in layout.splitlines():
        m = re.match(r" {4}([\w{},]+\.jsonl?)\s*(?:#\s*(.*))?$", line)  # under annotations/
        if not m:
            continue
        for k, name in enumerate(_expand(m.group(1))):
            listed.add(name)
            path = tmp_path / "annotations" / name
            if not path.is_file():
                bad.append(f"documented, not written: annotations/{name}")
            # the fields of the first split's lines (vqa's test lines have no answers, as documented)
            elif k == 0 and (m.group(2) or "").startswith("{") and name.endswith(".jsonl"):
                first = json.loads(path.read_text().splitlines()[0])
                fields = re.findall(r'"(\w+)"', m.group(2).split("}")[0])
                bad += [f"annotations/{name}: no field {f!r}" for f in fields if f not in first]
    written = {p.name for p in (tmp_path / "annotations").iterdir()}
    bad += [f"written, not documented: annotations/{n}" for n in sorted(written - listed)]
    ext = {"vp9": ".webm", "h264": ".mp4", "mjpeg": ".avi"}[args[args.index("--codec") + 1]]
    assert all(p.suffix == ext for p in (tmp_path / "videos").iterdir())
    assert (tmp_path / "meta.json").is_file() and any((tmp_path / "ground_truth").iterdir())
    assert all(p.suffix == ".jpg" for p in (tmp_path / "images").iterdir())
    assert len(listed) > 20
    assert not bad, "\n".join(bad)


def test_documented_deepspeed_sections_load():
    """A ```json block holding a `"deepspeed": {...}` section is one the config accepts."""

    from clipbert.train import config as C

    blocks = [
        (body, Where(doc, start))
        for doc in DOCS
        for lang, body, start in fenced_blocks(doc)
        if lang == "json" and body.lstrip().startswith('"deepspeed"')
    ]
    assert blocks
    for body, where in blocks:
        raw = json.loads(C.resolve_path("ds_synthetic").read_text())
        raw["deepspeed"] = json.loads("{" + body + "}")["deepspeed"]
        try:
            C.from_dict(raw)
        except C.ConfigError as err:
            pytest.fail(f"{where}: {err}")


def test_documented_checkpoints_come_from_documented_runs():
    """A run dir a documented command reads (`train.init_checkpoint=outputs/x/model`, `eval.checkpoint=`,
    predict's `--model`) is one a shipped config or a documented `train.output_dir=` writes."""
    written = {json.loads(p.read_text())["train"]["output_dir"] for p in (REPO / "configs").glob("ds_*.json")}
    read = []
    for cmd in python_commands():
        for assignment in _set_values(cmd.args):
            key, _, value = assignment.partition("=")
            if key == "train.output_dir":
                written.add(value)
            elif key in ("train.init_checkpoint", "eval.checkpoint"):
                read.append((value, cmd.where))
        if cmd.program == "module:clipbert.predict" and "--model" in cmd.args:
            read.append((cmd.args[cmd.args.index("--model") + 1], cmd.where))
    read = [(path, where) for path, where in read if path.startswith("outputs/")]
    assert len(read) > 5
    bad = [f"{where}: {path}" for path, where in read if "/".join(path.split("/")[:2]) not in written]
    assert not bad, "no documented run writes:\n" + "\n".join(bad)


def _stated(doc: str, pattern: str) -> str:
    m = re.search(pattern, doc_text(doc), re.S)
    assert m, f"{doc} no longer says {pattern!r}: update this test with the doc"
    return m.group(1)


def test_stated_constants_match_the_code():
    """Lists and versions the docs spell out: predict's file suffixes, the generator's VERSION, the op
    backends and NLL kernel variants."""
    from clipbert.data.synthetic.generate import VERSION
    from clipbert.data.video_source import VIDEO_SUFFIXES
    from clipbert.ops._backend import BACKENDS, NLL_KERNELS
    from clipbert.predict.inputs import IMAGE_SUFFIXES

    quoted = lambda text: tuple(re.findall(r'"(\w+)"', text))  # noqa: E731
    stated = {
        "video suffixes": (_stated("docs/TRAINING.md", r"\(their `([^`]+)` files").split(), VIDEO_SUFFIXES),
        "image suffixes": (
            _stated("docs/TRAINING.md", r"`--image` the same, with `([^`]+)`").split(),
            IMAGE_SUFFIXES,
        ),
        "README's VERSION": (_stated("README.md", r"`VERSION` (\d+) since"), str(VERSION)),
        "SYNTHETIC.md's VERSION": (
            _stated("docs/SYNTHETIC.md", r"bumped whenever[^;]*; (\d+) since"),
            str(VERSION),
        ),
        "backends": (
            quoted(_stated("docs/ARCHITECTURE.md", r"set_backend\(name: str\) +# ([^\n]+)")),
            BACKENDS,
        ),
        "nll kernels": (
            quoted(_stated("docs/ARCHITECTURE.md", r"set_nll_kernel\([^#]+# ([^\n]+)")),
            NLL_KERNELS,
        ),
    }
    # tuple(): a list of words against the code's tuple, or a string against a string, alike
    bad = [
        f"{what}: the docs say {d}, the code {c}" for what, (d, c) in stated.items() if tuple(d) != tuple(c)
    ]
    assert not bad, "\n".join(bad)


def _section_lines(doc: str, title: str) -> list[int]:
    """Where a section or a paragraph named `title` starts: a heading that holds it, or a line or bold
    lead-in that begins with it ("Why cut videos (...): ...")."""
    want = title.lower()
    return [
        i
        for i, line in prose_lines(doc)
        if (line.startswith("#") and want in line.lower())
        or re.sub(r"^[-*\s]+", "", line).lower().startswith(want)
    ]


def test_section_references_resolve():
    """`see "Why packs" above`, `(see Engine settings below)`, `` `docs/X.md` ("Title") ``: the section exists
    in that doc, on the side the text says."""
    refs, bad = [], []
    patterns = {  # (title, side) of each form; a reference may run over a line break
        r"see\s+\"?([A-Z][^\"\n]{2,40}?)\"?\s+(above|below)\b": lambda m: (m[1], m[2]),
        r"(above|below)(?:,\s+|\s+\()\"([^\"]+)\"": lambda m: (m[2], m[1]),
        r"`(docs/\w+\.md)`\s+\(\"([^\"]+)\"\)": lambda m: (m[2], None),
    }
    for doc in DOCS:
        lines = dict(prose_lines(doc))
        text = "\n".join(lines.get(i, "") for i in range(1, len(doc_text(doc).splitlines()) + 1))
        for pattern, title_side in patterns.items():
            for m in re.finditer(pattern, text):
                title, side = title_side(m)
                target = m[1] if side is None else doc
                refs.append(
                    (target, " ".join(title.split()), side, Where(doc, text[: m.start()].count("\n") + 1))
                )
    assert len(refs) > 4
    for target, title, side, where in refs:
        lines = _section_lines(target, title)
        if side == "above":
            lines = [n for n in lines if n < where.line]
        elif side == "below":
            lines = [n for n in lines if n > where.line]
        if not lines:
            bad.append(f"{where}: no section {title!r} {side or 'in ' + target}")
    assert not bad, "\n".join(bad)


# Names the docs quote that the code composes rather than spells: (the f-string that makes them, its file).
COMPOSED = {
    "itm_only_t2v_medr": ('f"itm_only_{k}"', "clipbert/train/evaluate.py"),
    "itm_only_v2t_r1": ('f"itm_only_{k}"', "clipbert/train/evaluate.py"),
    "step_00000365": ('f"step_{step:08d}"', "clipbert/train/checkpoint.py"),
    "fig5_cuda": ('f"fig5_{torch.device(args.device).type}', "benchmarks/memory_vs_ntrain.py"),
}


@cache
def _code_words() -> set[str]:
    roots = ["clipbert", "dali_pipelines", "benchmarks", "csrc", "configs", "tests"]
    files = [
        p
        for root in roots
        for p in (REPO / root).rglob("*")
        if p.suffix in (".py", ".json", ".sh", ".cu", ".cuh", ".cpp", ".h")
    ]
    files += [REPO / "train.py", REPO / "setup.py", REPO / "Makefile"]
    return {w for p in files for w in re.findall(r"\w+", p.read_text(errors="replace"))}


def test_quoted_identifiers_exist_in_the_code():
    """A snake_case name in backticks (a metric, a JSON key, a function, a key of perf.json) is one the code
    spells, so a rename in the code shows here. Argument placeholders in quoted signatures are skipped."""
    words, bad, seen = _code_words(), [], 0
    for doc in DOCS:
        for span, where in inline_spans(doc):
            if re.fullmatch(r"[\w.]+\(.*\)", span):
                continue  # a quoted call: its arguments are placeholders; the signature test checks it
            for name in re.findall(r"(?<![\w.<>/-])([a-z][a-z0-9]*(?:_[a-z0-9]+)+)(?![\w.(/-])", span):
                seen += 1
                if name in COMPOSED:
                    template, path = COMPOSED[name]
                    if template not in (REPO / path).read_text():
                        bad.append(f"{where}: {name}: {path} no longer makes it with {template}")
                elif name not in words:
                    bad.append(f"{where}: {name}")
    assert seen > 100
    assert not bad, "not in the code:\n" + "\n".join(bad)


def test_file_names_a_run_writes_are_the_codes():
    """A file a run is said to write (`steps.jsonl`, `eval_config.json`, `train_<card>_profile.md`) is named
    in the code that writes it (`<...>` parts are placeholders; the --merge inputs are examples)."""
    sources = [
        p for root in ("clipbert", "dali_pipelines", "benchmarks") for p in (REPO / root).rglob("*.py")
    ]
    sources += [REPO / "train.py", *(REPO / "benchmarks/gpu").glob("*.sh")]
    code = "\n".join(p.read_text() for p in sources)
    examples = {"A.json", "B.partial.json"}  # the inputs of PERFORMANCE.md's --merge example
    bad, seen = [], 0
    name = r"(?<![\w/.<-])([\w<>-]+(?:\.[a-z]+)*\.(?:jsonl|json|png|md|csv|h5|txt))(?![\w/])"
    for doc in DOCS:
        for span, where in inline_spans(doc):
            for found in re.findall(name, span):
                if re.search(r"20\d\d-\d\d-\d\d|^ds_", found) or found in examples or found in REPO_FILES:
                    continue  # results and configs have their own tests, above
                seen += 1
                if not all(part in code for part in re.split(r"<[^>]+>", found) if part):
                    bad.append(f"{where}: {found}")
    assert seen > 40
    assert not bad, "no code names these files:\n" + "\n".join(bad)
