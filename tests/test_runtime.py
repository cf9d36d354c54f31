"""`keep_freed_memory`: large tensors come from glibc's heap (reused) instead of fresh mappings."""

import os
import platform
import subprocess
import sys

import pytest

from fiber_det import runtime

# Prints how many bytes glibc serves from mmap'd blocks (mallinfo2's hblkhd) while a 40 MiB
# tensor is alive, beyond those before it (argv[1] "keep": keep_freed_memory() first). glibc's
# default maps anything over 32 MiB on its own and unmaps it on free; kept, it comes from the
# heap, where the next forward reuses it.
SCRIPT = """
import ctypes, importlib.util, sys, torch
spec = importlib.util.spec_from_file_location("runtime", sys.argv[2])  # not fiber_det's imports
runtime = importlib.util.module_from_spec(spec)
spec.loader.exec_module(runtime)
if sys.argv[1] == "keep":
    assert runtime.keep_freed_memory()
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]
mallinfo2 = ctypes.CDLL(None).mallinfo2
mallinfo2.restype = MallInfo2
before = mallinfo2().hblkhd
tensor = torch.empty(10 * 2**20)
print(mallinfo2().hblkhd - before)
"""

glibc_only = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's; other C libraries are kept"
)


def mapped_bytes(mode: str, extra_env: dict | None = None) -> int:
    env = {**os.environ, **(extra_env or {})}
    env.pop(runtime.OPT_OUT_VARIABLE, None)
    command = [sys.executable, "-c", SCRIPT, mode, runtime.__file__]
    completed = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    return int(completed.stdout.split()[-1])


@glibc_only
def test_kept_memory_serves_large_tensors_from_the_heap():
    assert mapped_bytes("default") >= 40 * 2**20
    assert mapped_bytes("keep") == 0


@glibc_only
def test_environment_variables_give_a_child_the_same_settings():
    assert mapped_bytes("default", runtime.glibc_malloc_environment()) == 0


@pytest.mark.parametrize("value", ["0", "false", "No", " OFF "])
def test_opt_out_variable_leaves_glibc_defaults(monkeypatch, value):
    monkeypatch.setenv(runtime.OPT_OUT_VARIABLE, value)
    monkeypatch.setattr(runtime.ctypes, "CDLL", pytest.fail)
    assert runtime.keep_freed_memory() is False


@pytest.mark.parametrize("value", [None, "", "1", "True", "on"])
def test_unset_empty_or_true_variable_keeps_memory(monkeypatch, value):
    if value is None:
        monkeypatch.delenv(runtime.OPT_OUT_VARIABLE, raising=False)
    else:
        monkeypatch.setenv(runtime.OPT_OUT_VARIABLE, value)
    assert runtime.keep_freed_memory_requested() is True


def test_unknown_variable_value_is_an_error_naming_it(monkeypatch):
    monkeypatch.setenv(runtime.OPT_OUT_VARIABLE, "maybe")
    monkeypatch.setattr(runtime.ctypes, "CDLL", pytest.fail)
    with pytest.raises(ValueError, match="FIBER_DET_KEEP_FREED_MEMORY='maybe'"):
        runtime.keep_freed_memory()


def test_other_c_libraries_are_left_alone(monkeypatch):
    monkeypatch.delenv(runtime.OPT_OUT_VARIABLE, raising=False)
    monkeypatch.setattr(runtime.platform, "libc_ver", lambda: ("", ""))
    monkeypatch.setattr(runtime.ctypes, "CDLL", pytest.fail)
    assert runtime.keep_freed_memory() is False
