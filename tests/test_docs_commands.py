"""The docs' commands against the code: every documented command line parses with its program's own parser,
every flag, choice and stated default exists, run_all.sh reads the knobs the docs set, the documented --help
and synthetic commands run, and documented Python calls fit their signatures. Messages name the doc
and line."""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import subprocess
import sys

import pytest
from docs_reading import (
    DOCS,
    READ_ELSEWHERE,
    REPO,
    RUN_ALL,
    _all_flags,
    _api_namespace,
    _Bound,
    _callee,
    _calls,
    _check_call,
    _expand,
    _is_method,
    _resolve,
    _run_all_variables,
    _run_entry,
    _same,
    _set_values,
    _statements,
    allowed_keys,
    check_args,
    documented_commands,
    fenced_blocks,
    inline_spans,
    load_error,
    parser_of,
    prose_lines,
    python_commands,
    run_all_settings,
)


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


def test_flags_named_in_prose_exist():
    """A `--flag` written in the prose belongs to some documented program (or a launcher's flags)."""
    known, bad = _all_flags(), []
    for doc in DOCS:
        for span, where in inline_spans(doc):
            for flag in re.findall(r"(?<![\w-])--[a-z][\w-]*", span):
                if flag not in known:
                    bad.append(f"{where}: {flag} (in `{span}`)")
    assert not bad, "no program takes:\n" + "\n".join(bad)


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
