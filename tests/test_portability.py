"""A laptop that is not this Linux box: a Mac has no triton or DALI wheel, and DeepSpeed picks its MPS
accelerator there. The CPU run must still train and evaluate (`make demo`)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# a world of one of its own: an earlier in-process test's RANK/MASTER_PORT would point it at that test's
# process group (address in use)
WORLD = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")

# train.py as `python train.py` runs it, with the optional packages made absent first (`import triton`
# raises and importlib.util.find_spec returns None, as where they are not installed)
RUN_WITHOUT = """
import runpy, sys
for name in sys.argv[1].split(","):
    if name:
        sys.modules[name] = None
sys.argv = ["train.py"] + sys.argv[2:]
runpy.run_path("train.py", run_name="__main__")
"""


def _train(bench: Path, out: Path, env: dict, hide: str = "") -> subprocess.CompletedProcess:
    args = [
        *("--config", "ds_synthetic.json"),
        *("--set", f"data.ann_dir={bench / 'annotations'}", "--set", f"data.video_dir={bench / 'videos'}"),
        *("--set", f"train.output_dir={out}", "--set", "train.max_steps=2", "--set", "train.eval_every=-1"),
        *("--set", "data.num_workers=0", "--set", "data.num_test_clips=2"),
    ]
    env = {**{k: v for k, v in os.environ.items() if k not in WORLD}, **env}
    return subprocess.run(
        [sys.executable, "-c", RUN_WITHOUT, hide, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_a_cpu_run_trains_on_the_cpu_whatever_accelerator_deepspeed_picked(bench, tmp_path):
    # DS_ACCELERATOR=cuda stands in for DeepSpeed's detection of MPS on a Mac, or of a GPU beside a
    # train.device=cpu run: the engine set that device and moved the model there, and the run failed in
    # deepspeed.initialize ("Found no NVIDIA driver" here; a model on mps fed CPU batches on a Mac).
    proc = _train(bench, tmp_path / "run", {"DS_ACCELERATOR": "cuda"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "DeepSpeed's accelerator was cuda; it runs on cpu, as train.device" in proc.stderr
    assert "eval test: t2v_r1=" in proc.stderr  # trained, then evaluated


@pytest.mark.slow
@pytest.mark.parametrize("hide", ["triton,nvidia.dali"])
def test_training_and_evaluation_need_neither_triton_nor_dali(bench, tmp_path, hide):
    proc = _train(bench, tmp_path / "run", {}, hide)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "eval test: t2v_r1=" in proc.stderr


def test_the_linux_only_pins_are_marked_so_a_mac_installs_the_rest():
    # neither triton nor nvidia-dali publishes a macOS wheel: an unmarked pin failed `make setup` there
    from packaging.requirements import Requirement

    mac = {"sys_platform": "darwin", "platform_system": "Darwin", "platform_machine": "arm64"}
    pins = [
        Requirement(line.split("#")[0].strip())
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if line.split("#")[0].strip()
    ]
    on_mac = {r.name for r in pins if r.marker is None or r.marker.evaluate(mac)}
    on_linux = {r.name for r in pins if r.marker is None or r.marker.evaluate({"sys_platform": "linux"})}
    assert on_linux - on_mac == {"triton", "nvidia-dali-cuda130"}
    assert {"torch", "deepspeed", "transformers", "av", "h5py"} <= on_mac


def test_jit_builds_stay_in_a_checkout_and_out_of_site_packages(tmp_path):
    # In a wheel, the directory above the package is site-packages: DeepSpeed's JIT ops were to be built
    # there (read-only in a shared environment). A checkout keeps them in its own .torch_extensions.
    from clipbert.train.engine import REPO, extensions_dir

    assert extensions_dir(REPO) == ROOT / ".torch_extensions"
    site = tmp_path / "site-packages"
    (site / "clipbert").mkdir(parents=True)
    assert extensions_dir(site) is None


def test_worker_defaults_count_the_cpus_this_process_may_use(monkeypatch):
    # A SLURM job given 8 of a node's 128 cores (a cpuset) saw os.cpu_count() = 128: build_frame_store's
    # default of one worker a core, less one, started 127 processes on 8 cores.
    import shutil

    from clipbert import system
    from clipbert.data import build_frame_store as bfs

    if shutil.which("taskset"):
        pinned = subprocess.run(
            [
                "taskset",
                "-c",
                "0",
                sys.executable,
                "-c",
                "from clipbert.system import usable_cpus as u; print(u())",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert pinned.stdout.strip() == "1", pinned.stderr
    monkeypatch.delattr(os, "process_cpu_count", raising=False)  # Python 3.13's name for the same count
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {4, 5, 6}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 128)
    assert system.usable_cpus() == 3
    seen = {}

    def fake_build(videos, out, fps, workers, *rest):
        seen["workers"] = workers
        return {"written": [], "skipped": [], "failed": []}

    monkeypatch.setattr(bfs, "build_frame_store", fake_build)
    assert bfs.main(["--videos", "v", "--out", "f.h5"]) == 0
    assert seen["workers"] == 2
