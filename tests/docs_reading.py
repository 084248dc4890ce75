"""Reading README.md and docs/*.md for the docs-against-code tests (test_docs_commands.py,
test_docs_references.py): their code blocks, prose, commands, config keys and the programs' parsers."""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import importlib
import inspect
import io
import re
import runpy
import shlex
import sys
import warnings
from functools import cache
from pathlib import Path

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


# Flags of the launchers and tools the docs use around this repo's programs (deepspeed, torchrun, srun, pip,
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
    "--module",
    "--nproc_per_node",
    "--nnodes",
    "--rdzv_backend",
    "--rdzv_endpoint",
    "--kill-on-bad-exit",
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


def _all_flags() -> set[str]:
    flags = set(LAUNCHER_FLAGS) | {"--dry-run"}
    for program in {c.program for c in python_commands()} | {"script:benchmarks/demo_diagnosis.py"}:
        flags |= set(parser_of(program)._option_string_actions)
    return flags


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


def github_anchor(heading: str) -> str:
    """GitHub's heading id: lower case, punctuation dropped (hyphens, underscores kept), spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(doc: str) -> set[str]:
    return {github_anchor(line.lstrip("#")) for _, line in prose_lines(doc) if re.match(r"#{1,6} ", line)}


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


def _same(doc_value: str, code_value: str) -> bool:
    try:
        return float(doc_value) == float(code_value)
    except ValueError:
        return doc_value == code_value


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


def _expand(pattern: str) -> list[str]:
    """`msrvtt_ret_{train,val,test}.jsonl` -> its three names."""
    m = re.search(r"\{([\w,]+)\}", pattern)
    if not m:
        return [pattern]
    return [
        n for part in m.group(1).split(",") for n in _expand(pattern[: m.start()] + part + pattern[m.end() :])
    ]


def _stated(doc: str, pattern: str) -> str:
    m = re.search(pattern, doc_text(doc), re.S)
    assert m, f"{doc} no longer says {pattern!r}: update this test with the doc"
    return m.group(1)


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
