"""Atomic file writes: a file is written at a temporary name beside its target and moved onto
it (os.replace) only when complete, so a crash never leaves a truncated file at the target and
an existing file survives a failed write."""

import os
import tempfile

import torch
from safetensors.torch import save_file

TEMPORARY_PREFIX = ".saving-"


class AtomicWriteFile:
    """A file opened for writing at a temporary name beside `path`. Leaving its `with` block
    normally (or `close()`) moves it onto `path`; an exception inside the block removes it."""

    def __init__(self, path: str, mode: str = "wb"):
        self.path = path
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        handle, self.temporary = tempfile.mkstemp(
            dir=folder, prefix=TEMPORARY_PREFIX, suffix="-" + os.path.basename(path)
        )
        self._file = os.fdopen(handle, mode)

    def __getattr__(self, name: str):
        if name == "_file":  # not opened (mkstemp failed): no recursion
            raise AttributeError(name)
        return getattr(self._file, name)

    def __enter__(self) -> "AtomicWriteFile":
        return self

    def __exit__(self, error_type, error, traceback) -> None:
        if error_type is None:
            self.close()
        else:
            self.discard()

    def close(self) -> None:
        """Flush to disk and move the file onto its target (once)."""
        if self._file.closed:
            return
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.chmod(self.temporary, 0o666 & ~current_umask())
        os.replace(self.temporary, self.path)

    def discard(self) -> None:
        """Drop what was written; the target is left as it was."""
        self._file.close()
        if os.path.exists(self.temporary):
            os.remove(self.temporary)


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class AtomicWritePathManager:
    """An iopath PathManager whose `open` for writing local files returns an `AtomicWriteFile`;
    everything else is the wrapped manager's. fvcore's Checkpointer writes checkpoints and
    `last_checkpoint` through its `path_manager`, so both become atomic."""

    def __init__(self, path_manager):
        self._path_manager = path_manager

    def __getattr__(self, name: str):
        return getattr(self._path_manager, name)

    def open(self, path: str, mode: str = "r", **kwargs):
        if "w" in mode and "://" not in str(path):
            return AtomicWriteFile(str(path), mode)
        return self._path_manager.open(path, mode, **kwargs)


def atomic_torch_save(data: dict, path: str) -> None:
    """torch.save(data, path), atomically (see `AtomicWriteFile`)."""
    with AtomicWriteFile(path, "wb") as handle:
        torch.save(data, handle)


def atomic_save_safetensors(
    tensors: dict[str, torch.Tensor], path: str, metadata: dict[str, str] | None = None
) -> None:
    """safetensors.torch.save_file(tensors, path), atomically (see `AtomicWriteFile`)."""
    with AtomicWriteFile(path, "wb") as handle:
        save_file(tensors, handle.temporary, metadata)
