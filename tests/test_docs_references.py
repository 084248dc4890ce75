"""The docs' references against the code: config keys and `--set` overrides against the schema, config
names, paths, result files, links and #anchors, make targets, clipbert names and quoted identifiers, the
config table and stated constants. Messages name the doc and line of the stale reference."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
from docs_reading import (
    COMPOSED,
    DOCS,
    FILE_SUFFIXES,
    REPO,
    REPO_FILES,
    Where,
    _code_words,
    _number,
    _repo_paths,
    _resolve,
    _section_lines,
    _set_values,
    _stated,
    _table_rows,
    allowed_keys,
    anchors,
    doc_text,
    documented_commands,
    documented_keys,
    error_examples,
    fenced_blocks,
    inline_spans,
    load_error,
    prose_lines,
    python_commands,
    shell_lines,
)


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
