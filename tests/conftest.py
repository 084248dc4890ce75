"""Test-wide setup. Environment variables must be set before triton or transformers are imported."""

import gc
import os
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]
os.environ.setdefault("TRITON_INTERPRET", "1")  # Triton kernels run on the CPU interpreter
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".torch_extensions"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

HAS_CUDA = torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "needs_cuda" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_cuda)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
    # TaskData.train() freezes the objects alive for the loader's forked workers (a run does it once); in
    # this one long process, what a test froze must stay collectable once the test is done
    gc.unfreeze()


@pytest.fixture(scope="module")
def cpu_world():
    """A process group of one on the CPU, as `python train.py` makes, with one intra-op thread: the trainer
    tests' tiny shapes only contend for the shared 2-core machine with more. Modules opt in with
    `pytestmark = pytest.mark.usefixtures("cpu_world")`."""
    from clipbert.train.engine import init_distributed

    init_distributed(torch.device("cpu"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """A tiny synthetic benchmark (12 videos, seed 0), generated once per test module that asks for it; a
    module with other needs defines its own `bench`."""
    from clipbert.data import synthetic

    out = tmp_path_factory.mktemp("synthetic")
    synthetic.generate(out, 12, 0, size="tiny", workers=1)
    return out


@pytest.fixture(scope="module")
def setup_py():
    """setup.py as a module, for its build helpers: setup() runs only under __main__ (pip's backend and
    `python setup.py` run it so)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("clipbert_setup_py", REPO / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def tokenizer():
    """The shipped BERT vocabulary's tokenizer (reading it costs about 0.2 s: once per run); a module may
    define its own."""
    from clipbert.data.tokenizer import build_tokenizer

    return build_tokenizer()


@pytest.fixture
def train_log(caplog):
    """caplog for the trainer's logger, which does not propagate to the root logger where caplog listens."""
    import logging

    logger = logging.getLogger("clipbert.train")
    logger.addHandler(caplog.handler)
    yield caplog
    logger.removeHandler(caplog.handler)
