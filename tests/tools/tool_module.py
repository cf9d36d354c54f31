"""Importing a script of tools/ (not a package) in tests."""

import importlib.util

from tests.conftest import REPO_ROOT


def load_tool(name: str):
    """tools/NAME.py as a module, freshly executed."""
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
