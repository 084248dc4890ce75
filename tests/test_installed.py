"""A non-editable install (`pip install .`, `pip install git+...`: a wheel in site-packages) used from a
directory of one's own. The wheel holds the package alone, so the package must carry what it reads: the
configs a bare name or `python -m clipbert.demo` looks up, the vocabulary, and an entry point to train with
(train.py is not in it). Nothing here compiles: `setup.py build_py` lays out the wheel's Python files and
package data, and the commands run on that tree with the repository off sys.path."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from clipbert.demo import DEMO_CONFIG, WORDS_CONFIG
from clipbert.train import config as C

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The package tree a wheel installs into site-packages (no kernels: the ops fall back, not used here)."""
    lib = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(lib)],
        cwd=ROOT,
        env={**os.environ, "CLIPBERT_CUDA": "0"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return lib


def _run_installed(lib: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """python *args in cwd with only the installed tree importable as clipbert (PYTHONPATH comes before the
    editable install's finder; the test checks clipbert.__file__ where it matters)."""
    env = {**os.environ, "PYTHONPATH": str(lib)}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_the_wheel_carries_the_configs_and_the_vocabulary(installed):
    shipped = sorted(p.name for p in (ROOT / "configs").glob("*.json"))
    assert sorted(p.name for p in (installed / "clipbert" / "configs").glob("*.json")) == shipped
    assert {WORDS_CONFIG, DEMO_CONFIG} <= set(shipped)
    assert (installed / "clipbert" / "assets" / "bert-base-uncased-vocab.txt").is_file()
    assert (installed / "clipbert" / "train" / "__main__.py").is_file()


def test_the_wheel_carries_every_file_of_the_packages(installed):
    # a data file added next to the code (like clipbert/assets/) reaches a wheel only through package_data.
    # The checkout's side is its tracked files: an editor's backup or a .DS_Store there is no package file.
    tops = ("clipbert", "dali_pipelines")
    listed = subprocess.run(["git", "ls-files", "--", *tops], cwd=ROOT, capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip(f"not a git checkout: {listed.stderr.strip()}")
    tracked = set(listed.stdout.split())
    shipped = {
        str(p.relative_to(installed)) for top in tops for p in (installed / top).rglob("*") if p.is_file()
    }
    assert tracked and tracked <= shipped, sorted(tracked - shipped)


def test_bare_config_names_resolve_in_the_installed_package(installed, tmp_path):
    # Before: CONFIG_DIR was site-packages/configs, so every bare name (and `python -m clipbert.demo`, which
    # loads its two stage configs by name) failed with "config 'ds_synthetic_words.json' not found".
    probe = (
        "import clipbert\n"
        "from clipbert.train import config as C\n"
        "print(clipbert.__file__)\n"
        f"for name in ('ds_synthetic', {WORDS_CONFIG!r}, {DEMO_CONFIG!r}):\n"
        "    print(C.resolve_path(name).resolve())\n"
    )
    proc = _run_installed(installed, tmp_path, "-c", probe)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert Path(lines[0]).resolve() == (installed / "clipbert" / "__init__.py").resolve()
    configs = (installed / "clipbert" / "configs").resolve()
    assert [Path(line) for line in lines[1:]] == [
        configs / "ds_synthetic.json",
        configs / WORDS_CONFIG,
        configs / DEMO_CONFIG,
    ]


def test_python_m_clipbert_train_runs_outside_the_repository(installed, tmp_path):
    # a wheel has no train.py: `python -m clipbert.train` is its entry point (and torchrun -m's, deepspeed
    # --module's). Before: "No module named clipbert.train.__main__".
    proc = _run_installed(installed, tmp_path, "-m", "clipbert.train", "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: python -m clipbert.train ")
    # the whole way to a resolved config by bare name, from the installed package, in the user's directory
    proc = _run_installed(
        installed, tmp_path, "-m", "clipbert.train", "--config", "ds_synthetic", "--print-config"
    )
    assert proc.returncode == 0, proc.stderr
    assert '"name": "msrvtt_ret"' in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # --print-config writes nothing


def test_the_installed_copy_of_configs_comes_before_site_packages_configs(tmp_path):
    site = tmp_path / "site-packages"
    (site / "configs").mkdir(parents=True)  # another distribution's top-level configs/
    (site / "clipbert" / "configs").mkdir(parents=True)
    assert C._config_dir(site / "clipbert") == site / "clipbert" / "configs"
    # a checkout: no clipbert/configs, the repository's configs/ next to the package
    checkout = tmp_path / "repo"
    (checkout / "clipbert").mkdir(parents=True)
    assert C._config_dir(checkout / "clipbert") == checkout / "configs"
    assert C.CONFIG_DIR == ROOT / "configs"  # this test run: the checkout's


def test_the_sdist_carries_what_the_wheel_is_built_from():
    manifest = (ROOT / "MANIFEST.in").read_text().splitlines()
    assert "graft csrc" in manifest  # the kernels' headers, which setup.py does not name
    assert "graft configs" in manifest  # package_dir maps clipbert.configs onto it
