"""Importing a script of tools/ or datasets/ (not a package) in tests."""

import importlib.util
from pathlib import Path

from tests.conftest import REPO_ROOT


def load_module(path: Path):
    """The script at `path` as a module, freshly executed."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_tool(name: str):
    """tools/NAME.py as a module, freshly executed."""
    return load_module(REPO_ROOT / "tools" / f"{name}.py")
