"""FiberCheckpointer: detectron2's DetectionCheckpointer for fiber_det's own files.

It loads the layout fiber_det saves (and tools/convert_checkpoint.py writes); nothing is
converted at load time: a file in another layout is an error naming the command that converts
it once. Swin relative position tables of another window size (a 384-px pre-training
checkpoint in a 576-px model) are resampled, as the original loader does. Checkpoints and
`last_checkpoint` are written atomically (fvcore writes both through `path_manager`).
"""

from detectron2.checkpoint import DetectionCheckpointer

from fiber_det.checkpoint.atomic import AtomicWritePathManager
from fiber_det.checkpoint.position_tables import resample_position_tables

# key prefixes of the released FIBER checkpoints -> the convert tool's --format
OFFICIAL_PREFIXES = {
    "fusion_backbone.": "fine",
    "rpn.": "fine",
    "vit_model.": "coarse",
    "text_transformer.": "coarse",
}


def layout_error(filename: str, state_dict: dict, model_keys: set[str]) -> str | None:
    """Why `state_dict` cannot load into a model with `model_keys` as is, with the command that
    converts it; None when it is in fiber_det's layout."""
    convert = f"python tools/convert_checkpoint.py {filename} converted.pth"
    for prefix, kind in OFFICIAL_PREFIXES.items():
        if any(key.startswith(prefix) for key in state_dict):
            return (
                f"{filename} is an official FIBER checkpoint (keys '{prefix}*'): fiber_det loads "
                f"converted files only. Convert it once with `{convert} --format {kind}` and "
                "give converted.pth instead"
            )
    if any(k.startswith("trunk.") for k in state_dict) and any(
        k.startswith("backbone.trunk.") for k in model_keys
    ):
        return (
            f"{filename} is a coarse-stage checkpoint (keys 'trunk.*') and the model is the "
            f"grounding detector: convert its trunk once with `{convert} --format coarse-trunk "
            "--config <the detector's config>` and give converted.pth instead"
        )
    return None


class FiberCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer that refuses other layouts (see the module docstring), resamples
    Swin position tables and writes atomically."""

    def __init__(self, model, save_dir: str = "", **kwargs):
        super().__init__(model, save_dir, **kwargs)
        self.path_manager = AtomicWritePathManager(self.path_manager)

    def _load_file(self, filename: str) -> dict:
        loaded = super()._load_file(filename)
        model_state = self.model.state_dict()
        error = layout_error(filename, loaded["model"], set(model_state))
        if error:
            raise ValueError(error)
        resized = resample_position_tables(loaded["model"], model_state)
        for key, (before, after) in resized.items():
            self.logger.info(
                f"{filename}: '{key}' resampled from {before} to {after} rows (bicubic; the "
                "Swin window of the model differs from the checkpoint's)"
            )
        return loaded
