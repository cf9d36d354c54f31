"""Checkpoints. Conversion of other layouts is explicit and offline (tools/convert_checkpoint.py):
pure rename tables (`rename`, `official`, `unimodal`) and file reading (`files`); the
checkpointer (`FiberCheckpointer`) loads fiber_det files only and saves atomically; inference
reads weights without unpickling and loads them strictly (`model_weights`)."""

from fiber_det.checkpoint.atomic import (
    AtomicWriteFile,
    atomic_save_safetensors,
    atomic_torch_save,
)
from fiber_det.checkpoint.checkpointer import FiberCheckpointer, layout_error
from fiber_det.checkpoint.files import (
    OFFICIAL_EMA_KEY,
    load_official_state_dict,
    save_converted_checkpoint,
    torch_load_on_cpu,
    unwrap_official_checkpoint,
)
from fiber_det.checkpoint.model_weights import (
    load_weights_strictly,
    read_model_weights,
    weight_errors,
)
from fiber_det.checkpoint.official import (
    OFFICIAL_FORMATS,
    TRUNK_BUFFER_DROPS,
    convert_coarse,
    convert_coarse_for_detector,
    convert_fine_grained_detector,
    convert_fine_head,
    convert_fine_trunk,
    convert_official,
    detect_official_format,
    official_source_names,
    trunk_rename_rules,
)
from fiber_det.checkpoint.position_tables import (
    interpolate_relative_position_bias,
    resample_position_tables,
)
from fiber_det.checkpoint.rename import (
    ConversionResult,
    DropRule,
    RenameRule,
    rename_state_dict,
    strip_prefix,
)
from fiber_det.checkpoint.unimodal import (
    convert_swin_checkpoint,
    convert_text_state_dict,
    load_swin_weights,
    load_text_weights,
)
from fiber_det.checkpoint.verify import LoadCheck, check_against_model, conversion_errors

__all__ = [
    "OFFICIAL_EMA_KEY",
    "OFFICIAL_FORMATS",
    "TRUNK_BUFFER_DROPS",
    "AtomicWriteFile",
    "ConversionResult",
    "DropRule",
    "FiberCheckpointer",
    "LoadCheck",
    "RenameRule",
    "atomic_save_safetensors",
    "atomic_torch_save",
    "check_against_model",
    "conversion_errors",
    "convert_coarse",
    "convert_coarse_for_detector",
    "convert_fine_grained_detector",
    "convert_fine_head",
    "convert_fine_trunk",
    "convert_official",
    "convert_text_state_dict",
    "convert_swin_checkpoint",
    "detect_official_format",
    "interpolate_relative_position_bias",
    "layout_error",
    "load_weights_strictly",
    "load_official_state_dict",
    "load_text_weights",
    "load_swin_weights",
    "official_source_names",
    "read_model_weights",
    "rename_state_dict",
    "resample_position_tables",
    "save_converted_checkpoint",
    "strip_prefix",
    "torch_load_on_cpu",
    "trunk_rename_rules",
    "unwrap_official_checkpoint",
    "weight_errors",
]
