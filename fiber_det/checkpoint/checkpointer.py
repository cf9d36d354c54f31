"""FiberCheckpointer: detectron2's DetectionCheckpointer for fiber_det's own files.

It loads the layout fiber_det saves (and tools/convert_checkpoint.py writes); nothing is
converted at load time: a file in another layout is an error naming the command that converts
it once. Swin relative position tables of another window size (a 384-px pre-training
checkpoint in a 576-px model) are resampled, as the original loader does. Checkpoints and
`last_checkpoint` are written atomically (fvcore writes both through `path_manager`); temporary
files a killed save left in the folder are removed at start-up. Nothing is unpickled: `.pkl`
files are refused, `.pth` files read with torch.load(weights_only=True), `.safetensors` through
the safetensors library. `--resume` falls back to the newest checkpoint that loads.
"""

from pathlib import Path

from detectron2.checkpoint import DetectionCheckpointer
from safetensors.torch import load_file

from fiber_det.checkpoint.atomic import TEMPORARY_PREFIX, AtomicWritePathManager
from fiber_det.checkpoint.files import torch_load_on_cpu
from fiber_det.checkpoint.position_tables import resample_position_tables

PICKLE_SUFFIXES = (".pkl", ".pickle", ".pyth")
PICKLE_REFUSED = (
    "{path}: pickle files can run arbitrary code when loaded, so fiber_det does not read them. "
    "Save the weights as safetensors or as a torch file of tensors "
    "(torch.save({{'model': state_dict}}, 'weights.pth')) where you trust the file"
)

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
        if save_dir and self.save_to_disk:
            self.remove_stale_temporaries()

    def remove_stale_temporaries(self) -> list[str]:
        """Delete the `.saving-*` files an interrupted save left in `save_dir`; their names."""
        folder = Path(self.save_dir)
        stale = sorted(folder.glob(TEMPORARY_PREFIX + "*")) if folder.is_dir() else []
        for path in stale:
            path.unlink(missing_ok=True)
            self.logger.warning(f"removed {path}: the temporary file of an interrupted save")
        return [str(path) for path in stale]

    def resume_or_load(self, path: str, *, resume: bool = True) -> dict:
        """fvcore's resume_or_load, except that a `last_checkpoint` that is empty, names a
        missing file or one that does not load falls back to the newest `*.pth` in `save_dir`
        that loads (each one skipped is logged with why); with none to resume from, `path`."""
        if not resume:
            return self.load(path, checkpointables=[])
        skipped = []
        for candidate in self.resume_candidates():
            try:
                checkpoint = self._load_file(candidate)
            except (OSError, ValueError) as error:
                self.logger.warning(f"--resume: skipped {candidate}: {error}")
                skipped.append(candidate)
                continue
            if skipped:
                self.logger.warning(f"--resume: resuming from {candidate} instead of {skipped[0]}")
            self._preloaded = (candidate, checkpoint)
            return self.load(candidate)
        if skipped:
            raise ValueError(
                f"--resume: no checkpoint in {self.save_dir} loads (tried {', '.join(skipped)}); "
                "remove them to start from MODEL.WEIGHTS"
            )
        return self.load(path, checkpointables=[])

    def resume_candidates(self) -> list[str]:
        """With a `last_checkpoint` in `save_dir` (a run to resume): the file it names (when
        it exists), then every other `*.pth` of `save_dir`, newest first."""
        folder = Path(self.save_dir)
        tag = folder / "last_checkpoint"
        if not tag.is_file():
            return []
        named = tag.read_text().strip()
        if not (folder / named).is_file():
            self.logger.warning(f"--resume: {tag} names {named!r}, which is not a file")
        first = [folder / named] if named and (folder / named).is_file() else []
        others = sorted(
            (path for path in folder.glob("*.pth") if path not in first),
            key=lambda path: path.stat().st_mtime,
            reverse=True,
        )
        return [str(path) for path in first + others]

    def _load_file(self, filename: str) -> dict:
        preloaded = getattr(self, "_preloaded", None)
        self._preloaded = None
        if preloaded and preloaded[0] == filename:
            return preloaded[1]
        loaded = read_checkpoint(filename)
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


def read_checkpoint(filename: str) -> dict:
    """`{"model": state_dict, ...}` from a `.safetensors` or `.pth` file, nothing unpickled; a
    pickle file, an unreadable file or one without a state dict is an error naming it."""
    if filename.lower().endswith(PICKLE_SUFFIXES):
        raise ValueError(PICKLE_REFUSED.format(path=filename))
    if filename.lower().endswith(".safetensors"):
        try:
            return {"model": load_file(filename)}
        except Exception as error:  # safetensors raises its own SafetensorError and OSError
            raise ValueError(f"{filename}: not a readable safetensors file: {error}") from error
    hint = "fiber_det does not unpickle them (they can run code): save the tensors alone"
    loaded = torch_load_on_cpu(filename, pickle_hint=hint)
    if isinstance(loaded, dict) and "model" not in loaded:
        loaded = {"model": loaded}
    if not isinstance(loaded, dict) or not isinstance(loaded["model"], dict) or not loaded["model"]:
        raise ValueError(f"{filename}: holds no state dict (expected {{'model': {{name: ...}}}})")
    return loaded
