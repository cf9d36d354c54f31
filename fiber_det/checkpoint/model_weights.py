"""Weights for inference, read safely and loaded strictly (GroundingPredictor, tools/demo.py,
tools/serve.py, from_pretrained).

Nothing read here can run code: `.safetensors` files go through the safetensors library,
`.pth` / `.pt` files through torch.load(weights_only=True) (tensors and plain containers
only), and pickle files (`.pkl`) are refused. Loading is strict: a missing, unexpected or
mis-shaped key, a non-finite tensor, an official or coarse-stage checkpoint are errors naming
the file and the first offending keys; nothing is loaded then.
"""

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from fiber_det.checkpoint.checkpointer import PICKLE_REFUSED, layout_error
from fiber_det.checkpoint.files import torch_load_on_cpu
from fiber_det.checkpoint.verify import check_against_model

KEYS_SHOWN = 5
PICKLE_SUFFIXES = (".pkl", ".pickle")


def read_model_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of a weights file: safetensors, or a `.pth` holding `{"model": ...}` (what
    detectron2's checkpointer and tools/convert_checkpoint.py write) or a bare state dict."""
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ValueError(PICKLE_REFUSED.format(path=path))
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix.lower() == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as error:
            raise ValueError(
                f"{path}: not a complete safetensors file (truncated or corrupt?): {error}"
            ) from error
    hint = "fiber_det does not unpickle them (they can run code): save the tensors alone"
    checkpoint = torch_load_on_cpu(str(path), pickle_hint=hint)
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("model"), dict):
        checkpoint = checkpoint["model"]
    if not isinstance(checkpoint, dict) or not checkpoint:
        raise ValueError(f"{path}: holds no state dict (expected {{'model': {{name: tensor}}}})")
    not_tensors = [key for key, value in checkpoint.items() if not torch.is_tensor(value)]
    if not_tensors:
        raise ValueError(f"{path}: entries that are not tensors: {_first(not_tensors)}")
    return checkpoint


def weight_errors(
    state_dict: dict[str, torch.Tensor], model: torch.nn.Module, source: str
) -> list[str]:
    """Why `state_dict` (read from `source`) cannot load strictly into `model`; [] when it can.
    One line per kind of problem, each with its count and first keys."""
    model_state = model.state_dict()
    layout = layout_error(source, state_dict, set(model_state))
    if layout:
        return [layout]
    shapes = {key: tuple(value.shape) for key, value in model_state.items()}
    check = check_against_model(state_dict, shapes)
    wrong = [
        f"{key} {list(ours)} vs model {list(theirs)}" for key, ours, theirs in check.wrong_shapes
    ]
    non_finite = [key for key, value in state_dict.items() if not all_finite(value)]
    problems = (
        ("missing keys (the model has them, the file does not)", check.missing),
        ("unexpected keys (the model has no such parameter)", check.unexpected),
        ("keys of the wrong shape", wrong),
        ("tensors with NaN or infinite values", non_finite),
    )
    return [f"{len(keys)} {title}: {_first(keys)}" for title, keys in problems if keys]


def all_finite(tensor: torch.Tensor) -> bool:
    """No NaN or infinity in `tensor` (two reductions: NaN propagates through min and max,
    many times faster than torch.isfinite on the CPU)."""
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return True
    low, high = torch.aminmax(tensor)
    return bool(torch.isfinite(low) & torch.isfinite(high))


def load_weights_strictly(model: torch.nn.Module, path: str | Path) -> None:
    """Read `path` (see `read_model_weights`) and load it into `model`, strictly."""
    state_dict = read_model_weights(path)
    errors = weight_errors(state_dict, model, str(path))
    if errors:
        raise ValueError(f"{path} does not fit the model: " + "; ".join(errors))
    model.load_state_dict(state_dict, strict=True)


def _first(keys: list[str]) -> str:
    shown = ", ".join(keys[:KEYS_SHOWN])
    return shown + (f", ... ({len(keys) - KEYS_SHOWN} more)" if len(keys) > KEYS_SHOWN else "")
