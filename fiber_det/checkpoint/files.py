"""Checkpoint files: reading official FIBER files and writing converted ones atomically."""

import pickle
import zipfile

import torch

from fiber_det.checkpoint.atomic import atomic_torch_save
from fiber_det.checkpoint.rename import strip_prefix

# GLIP / FIBER's maskrcnn_benchmark trainer stores `ModelEma.state_dict()` beside `model` under
# this key when SOLVER.MODEL_EMA > 0 (microsoft/GLIP engine/trainer.py: arguments["model_ema"]).
OFFICIAL_EMA_KEY = "model_ema"


def load_official_state_dict(
    path: str, ema: bool = False, allow_pickle: bool = False
) -> dict[str, torch.Tensor]:
    """The tensors of an official FIBER / DesCo-FIBER file, `module.` prefixes stripped:
    maskrcnn_benchmark `{"model": ...}` (its EMA copy `model_ema` when `ema`), Lightning
    `{"state_dict": ...}`, a trunk-only `{"state_dict": ...}` or a bare state dict.
    `allow_pickle` unpickles arbitrary objects (only for files you trust)."""
    hint = "pass allow_pickle=True (--allow-pickle) if you trust the file"
    checkpoint = torch_load_on_cpu(path, allow_pickle, hint)
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path}: expected a dict, got {type(checkpoint).__name__}")
    return unwrap_official_checkpoint(checkpoint, path, ema)


def torch_load_on_cpu(path: str, allow_pickle: bool = False, pickle_hint: str = "") -> object:
    """torch.load onto the CPU; tensors and plain containers only unless `allow_pickle`. A
    missing, empty, truncated or foreign file and one holding other objects are errors naming
    `path` (`pickle_hint` says what to do about the latter)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"checkpoint not found: {path}") from error
    except pickle.UnpicklingError as error:
        lines = str(error).splitlines()
        detail = next((line.strip() for line in lines if "global" in line.lower()), None)
        if detail is None:
            raise _unreadable(path, error) from error
        raise ValueError(
            f"{path}: holds objects other than tensors and plain types; {pickle_hint} ({detail})"
        ) from error
    except (EOFError, KeyError, RuntimeError, zipfile.BadZipFile) as error:
        raise _unreadable(path, error) from error


def _unreadable(path: str, error: Exception) -> ValueError:
    first_line = (str(error).splitlines() or [""])[0]
    return ValueError(
        f"{path}: not a readable PyTorch checkpoint (empty, truncated or another kind of file; "
        f"{type(error).__name__}: {first_line})"
    )


def unwrap_official_checkpoint(
    checkpoint: dict, source: str, ema: bool = False
) -> dict[str, torch.Tensor]:
    """The state dict inside a loaded official checkpoint (see `load_official_state_dict`)."""
    if ema:
        if not isinstance(checkpoint.get(OFFICIAL_EMA_KEY), dict):
            raise KeyError(
                f"{source}: EMA weights asked for, but there is no '{OFFICIAL_EMA_KEY}' entry "
                f"(top-level keys: {sorted(checkpoint)[:10]})"
            )
        tensors = checkpoint[OFFICIAL_EMA_KEY]
    else:
        wrapper = next(
            (k for k in ("model", "state_dict") if isinstance(checkpoint.get(k), dict)), None
        )
        tensors = checkpoint[wrapper] if wrapper else checkpoint
    not_tensors = [k for k, v in tensors.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ValueError(f"{source}: entries that are not tensors: {not_tensors[:10]}")
    return strip_prefix(tensors, "module.")


def save_converted_checkpoint(state_dict: dict[str, torch.Tensor], path: str, **extra) -> None:
    """Write `{"model": state_dict, "matching_heuristics": False, **extra}` (what detectron2's
    DetectionCheckpointer loads) atomically."""
    atomic_torch_save({"model": state_dict, "matching_heuristics": False, **extra}, path)
