"""Every YAML under configs/ merges onto get_cfg() + add_fiber_config with known keys only."""

from pathlib import Path

import pytest
from detectron2.config import get_cfg

from fiber_det.config import add_fiber_config

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CONFIG_FILES = sorted(CONFIG_DIR.rglob("*.yaml"))


def _fiber_cfg():
    cfg = get_cfg()
    add_fiber_config(cfg)
    return cfg


def test_config_dir_is_not_empty():
    assert CONFIG_DIR / "Base-FIBER.yaml" in CONFIG_FILES


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_config_merges(path: Path):
    cfg = _fiber_cfg()
    cfg.merge_from_file(str(path))
    cfg.freeze()
    assert cfg.INPUT.FORMAT in ("BGR", "RGB")


def _base_depth(path: Path) -> int:
    """Number of _BASE_ hops from `path` to a file without one."""
    for line in path.read_text().splitlines():
        if line.startswith("_BASE_:"):
            base = line.split(":", 1)[1].split("#")[0].strip().strip("\"'")
            return 1 + _base_depth((path.parent / base).resolve())
    return 0


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_base_chains_are_at_most_two_deep(path: Path):
    assert _base_depth(path) <= 2


def test_base_depth_counts_hops(tmp_path: Path):
    (tmp_path / "a.yaml").write_text("SEED: 1\n")
    (tmp_path / "b.yaml").write_text('_BASE_: "a.yaml"\n')
    (tmp_path / "c.yaml").write_text("_BASE_: b.yaml  # comment\n")
    assert [_base_depth(tmp_path / f"{n}.yaml") for n in "abc"] == [0, 1, 2]


def test_unknown_key_is_rejected(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f'_BASE_: "{CONFIG_DIR / "Base-FIBER.yaml"}"\nMODEL:\n  NOT_A_KEY: 1\n')
    with pytest.raises(KeyError, match="NOT_A_KEY"):
        _fiber_cfg().merge_from_file(str(bad))


def test_fiber_keys_are_declared():
    cfg = _fiber_cfg()
    assert "FIBER" in cfg.MODEL and "PRETRAIN" in cfg.MODEL
