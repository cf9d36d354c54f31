"""Checkpoint files: reading official FIBER files, checking converted tensors against a model,
atomic writes, and `FiberCheckpointer` (detectron2's checkpointer that also reads coarse-stage
checkpoints and writes atomically). The renaming itself lives in `fiber_det.checkpoint`."""

import os
import pickle
import re
import tempfile
from dataclasses import dataclass, field

import torch
from detectron2.checkpoint import DetectionCheckpointer

from fiber_det.checkpoint import (
    ConversionResult,
    convert_coarse,
    convert_coarse_for_detector,
    convert_fine_grained_detector,
    interpolate_relative_position_bias,
    is_coarse_checkpoint,
    strip_prefix,
)


def atomic_torch_save(data: dict, path: str) -> None:
    """torch.save to a temporary file in the same folder, then os.replace: an interrupted run
    never leaves a truncated file at `path`, and an existing file survives a failed write."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".saving-", suffix=".pth")
    os.close(handle)
    try:
        torch.save(data, temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


# GLIP / FIBER's maskrcnn_benchmark trainer stores `ModelEma.state_dict()` beside `model` under
# this key when SOLVER.MODEL_EMA > 0 (microsoft/GLIP engine/trainer.py: arguments["model_ema"]).
OFFICIAL_EMA_KEY = "model_ema"
OFFICIAL_FORMATS = ("fine", "coarse")


def load_official_state_dict(
    path: str, ema: bool = False, allow_pickle: bool = False
) -> dict[str, torch.Tensor]:
    """The tensors of an official FIBER / DesCo-FIBER file, `module.` prefixes stripped:
    maskrcnn_benchmark `{"model": ...}` (its EMA copy `model_ema` when `ema`), Lightning
    `{"state_dict": ...}`, a trunk-only `{"state_dict": ...}` or a bare state dict.
    `allow_pickle` unpickles arbitrary objects (only for files you trust)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"checkpoint not found: {path}") from error
    except pickle.UnpicklingError as error:
        lines = str(error).splitlines() or [""]
        detail = next((line.strip() for line in lines if "Unsupported global" in line), lines[0])
        raise ValueError(
            f"{path}: holds objects other than tensors and plain types; pass allow_pickle=True "
            f"(--allow-pickle) if you trust the file ({detail})"
        ) from error
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path}: expected a dict, got {type(checkpoint).__name__}")
    return unwrap_official_checkpoint(checkpoint, path, ema)


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


def detect_official_format(state_dict: dict[str, torch.Tensor]) -> str:
    """'fine' (`fusion_backbone.*`, with or without the `rpn.*` head) or 'coarse'
    (`vit_model.*`)."""
    if any(k.startswith("fusion_backbone.") for k in state_dict):
        return "fine"
    if any(k.startswith("vit_model.") for k in state_dict):
        return "coarse"
    raise ValueError(
        "not an official FIBER checkpoint: no 'fusion_backbone.*' (fine-grained) or "
        f"'vit_model.*' (coarse) keys; first keys: {list(state_dict)[:5]}"
    )


def convert_official(
    state_dict: dict[str, torch.Tensor], kind: str, window_size: int | None = None
) -> ConversionResult:
    """Rename an official state dict of format `kind` ('fine' -> GroundingDetector, trunk-only
    files included; 'coarse' -> FiberPretrainModel, Swin tables resampled to `window_size`)."""
    if kind == "fine":
        return convert_fine_grained_detector(state_dict)
    if kind == "coarse":
        return convert_coarse(state_dict, window_size=window_size)
    raise ValueError(f"unknown checkpoint format '{kind}' (expected one of {OFFICIAL_FORMATS})")


def official_source_names(keys: list[str], kind: str) -> dict[str, str]:
    """{converted name: official name} for `keys`, by running the same rules on the names."""
    names = {key: key for key in keys}
    return convert_official(names, kind).state_dict  # type: ignore[arg-type]


@dataclass
class LoadCheck:
    """How a converted state dict fits a model: keys it lacks, keys it has in excess, and
    (key, checkpoint shape, model shape) for every shape mismatch."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    wrong_shapes: list[tuple[str, tuple, tuple]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.wrong_shapes)


def check_against_model(
    state_dict: dict[str, torch.Tensor],
    model_shapes: dict[str, tuple],
    may_lack: list[str] = (),
) -> LoadCheck:
    """Compare converted tensors with a model's `{name: shape}`; model keys matching a regex of
    `may_lack` (state the model starts without, e.g. a feature queue) are not missing."""
    return LoadCheck(
        missing=[
            k
            for k in model_shapes
            if k not in state_dict and not any(re.match(p, k) for p in may_lack)
        ],
        unexpected=[k for k in state_dict if k not in model_shapes],
        wrong_shapes=[
            (k, tuple(v.shape), tuple(model_shapes[k]))
            for k, v in state_dict.items()
            if k in model_shapes and tuple(v.shape) != tuple(model_shapes[k])
        ],
    )


def conversion_errors(
    result: ConversionResult, check: LoadCheck, sources: dict[str, str] | None = None
) -> list[str]:
    """One line per offending key: unconverted, missing, unexpected or of the wrong shape."""
    sources = sources or {}

    def named(key: str) -> str:
        return f"'{key}'" + (f" (from '{sources[key]}')" if key in sources else "")

    return (
        [f"unconverted (no rename rule): '{k}'" for k in result.unconverted]
        + [f"missing (the model has it, the checkpoint does not): '{k}'" for k in check.missing]
        + [f"unexpected (the model has no such key): {named(k)}" for k in check.unexpected]
        + [
            f"wrong shape: {named(k)} is {list(ours)} in the checkpoint, "
            f"{list(theirs)} in the model"
            for k, ours, theirs in check.wrong_shapes
        ]
    )


def save_converted_checkpoint(state_dict: dict[str, torch.Tensor], path: str, **extra) -> None:
    """Write `{"model": state_dict, "matching_heuristics": False, **extra}` (what detectron2's
    DetectionCheckpointer loads) atomically."""
    atomic_torch_save({"model": state_dict, "matching_heuristics": False, **extra}, path)


def resample_position_tables(
    state_dict: dict, model_state: dict[str, torch.Tensor]
) -> dict[str, tuple[int, int]]:
    """Resample, in place, every Swin `relative_position_bias_table` of `state_dict` whose row
    count differs from the model's (another image size, hence window: a 384 pre-training
    checkpoint in a 576 VQA model), as the original loader does (coarse_grained_spec.md a.1).
    The model keeps its own position index and shift masks. Returns {key: (rows, new rows)}."""
    resized = {}
    for key, table in state_dict.items():
        target = model_state.get(key) if key.endswith("relative_position_bias_table") else None
        if target is None or not isinstance(table, torch.Tensor) or table.shape == target.shape:
            continue
        if table.dim() != 2 or table.shape[1] != target.shape[1]:
            continue  # another head count: left for the loader to report as a shape mismatch
        window = (round(target.shape[0] ** 0.5) + 1) // 2
        state_dict[key] = interpolate_relative_position_bias(table, window)
        resized[key] = (table.shape[0], target.shape[0])
    return resized


class FiberCheckpointer(DetectionCheckpointer):
    """detectron2's DetectionCheckpointer that also reads coarse-stage checkpoints.

    An official coarse checkpoint is renamed onto FiberPretrainModel (a model with
    `cross_modal_*` heads) or onto the detector (`convert_coarse_for_detector`); a fiber_det
    coarse checkpoint is renamed onto the detector. Dropped keys are logged with their reason;
    detectron2 then reports every remaining key the model does not use. Swin position tables
    of another window size are resampled (`resample_position_tables`).
    """

    def _load_file(self, filename: str) -> dict:
        loaded = self._convert_coarse(filename, super()._load_file(filename))
        resized = resample_position_tables(loaded["model"], self.model.state_dict())
        for key, (before, after) in resized.items():
            self.logger.info(
                f"{filename}: '{key}' resampled from {before} to {after} rows (bicubic; the "
                "Swin window of the model differs from the checkpoint's)"
            )
        return loaded

    def _convert_coarse(self, filename: str, loaded: dict) -> dict:
        """Rename a coarse checkpoint onto the model (see the class docstring)."""
        state_dict = loaded["model"]
        if not is_coarse_checkpoint(state_dict):
            return loaded
        if hasattr(self.model, "cross_modal_text_transform"):
            tensors = state_dict.get("state_dict", state_dict)
            if not any(k.startswith("vit_model.") for k in tensors):
                return loaded  # fiber_det's own coarse checkpoint: names already match
            result = convert_coarse(state_dict)
        else:
            result = convert_coarse_for_detector(state_dict)
        for key, reason in result.dropped.items():
            self.logger.info(f"{filename}: not loading '{key}': {reason}")
        if result.unconverted:
            raise ValueError(f"{filename}: keys with no conversion rule: {result.unconverted}")
        return {**loaded, "model": result.state_dict, "matching_heuristics": False}

    def save(self, name: str, **kwargs) -> None:
        """fvcore's `Checkpointer.save`, written atomically (see `atomic_torch_save`)."""
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        data.update({key: obj.state_dict() for key, obj in self.checkpointables.items()})
        data.update(kwargs)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {path}")
        atomic_torch_save(data, path)
        self.tag_last_checkpoint(basename)
