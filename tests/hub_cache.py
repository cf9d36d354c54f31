"""A local directory laid out as huggingface_hub's cache: stands in for the hub in tests."""

import shutil
from pathlib import Path

FAKE_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def hub_cache_entry(cache: Path, repo_id: str, files: dict[str, Path]) -> Path:
    """Lay out `files` ({name in the repo: local path}) as huggingface_hub's cache stores one
    revision of `repo_id` (models--owner--name/refs/main + snapshots/<commit>/...); returns
    the snapshot folder."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / FAKE_COMMIT
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(FAKE_COMMIT)
    for name, path in files.items():
        shutil.copy(path, snapshot / name)
    return snapshot
