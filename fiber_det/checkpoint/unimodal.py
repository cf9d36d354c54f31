"""Initialise the trunk's towers from local unimodal checkpoints (nothing is downloaded).

- Swin: a classification checkpoint in microsoft/Swin-Transformer's format (e.g.
  swin_base_patch4_window12_384_22k.pth) or timm's, relative position tables resampled to
  the configured window.
- RoBERTa / BERT: a transformers directory (`save_pretrained` layout) or, with network, a hub
  name.

The fusion modules (and output norms the classifier lacks) stay at their initialisation; any
other missing, unexpected or mis-shaped key is an error that names the file.
"""

from pathlib import Path

import torch
from torch import nn

from fiber_det.checkpoint.official import TRUNK_BUFFER_DROPS
from fiber_det.checkpoint.position_tables import resample_tables_to_window
from fiber_det.checkpoint.rename import ConversionResult, DropRule, RenameRule, rename_state_dict

# Module-name fragments a unimodal checkpoint cannot provide.
SWIN_NEW_MODULES = (".i2t.", "stage_norms.", "final_norm.")

TEXT_NEW_MODULES = (".t2i.",)

SWIN_DROPS = TRUNK_BUFFER_DROPS + [
    DropRule(r"head\.", "the ImageNet classifier, unused by the trunk"),
]


def convert_swin_checkpoint(
    checkpoint: dict, window_size: int | None = None, final_norm: bool = True
) -> ConversionResult:
    """A Swin classification checkpoint (microsoft/Swin-Transformer's `{'model': ...}` or timm's
    layout) -> FusedSwin keys; relative position tables resampled to `window_size` if given.
    `final_norm=False` drops the classifier's last LayerNorm (per-stage output norms)."""
    state_dict = checkpoint.get("model", checkpoint.get("state_dict", checkpoint))
    timm_layout = "layers.0.downsample.reduction.weight" not in state_dict and any(
        k.startswith("layers.1.downsample.") for k in state_dict
    )
    rules = [RenameRule(r"norm\.", "final_norm."), RenameRule(r"(patch_embed\.|layers\.)", r"\1")]
    if timm_layout:  # timm merges patches at the start of stage i + 1 (timm checkpoint_filter_fn)
        rules = [
            RenameRule(rf"layers\.{i}\.downsample\.", f"layers.{i - 1}.downsample.")
            for i in range(1, 8)
        ] + rules
    drops = SWIN_DROPS
    if not final_norm:
        drops = drops + [DropRule(r"norm\.", "the classifier's final norm (per-stage norms used)")]
    result = rename_state_dict(state_dict, rules, drops)
    if window_size is not None:
        resample_tables_to_window(result.state_dict, window_size)
    return result


# RobertaModel / BertModel keys, or the masked-LM models' (under `roberta.` / `bert.`)
TEXT_RULES = [
    RenameRule(r"(?:roberta\.|bert\.)?encoder\.layer\.(\d+)\.", r"layers.\1."),
    RenameRule(r"(?:roberta\.|bert\.)?embeddings\.", "embeddings."),
]

TEXT_DROPS = TRUNK_BUFFER_DROPS + [
    DropRule(r"(roberta\.|bert\.)?pooler\.", "the pooler is unused (FIBER builds the text tower "
             "without it)"),
    DropRule(r"(lm_head|cls)\.", "the masked-LM head is not part of the trunk"),
]  # fmt: skip


def convert_text_state_dict(state_dict: dict[str, torch.Tensor]) -> ConversionResult:
    """A transformers RoBERTa or BERT state dict (the base model or its masked-LM model) ->
    FusedRoberta / FusedBert."""
    return rename_state_dict(state_dict, TEXT_RULES, TEXT_DROPS)


def load_converted(
    module: nn.Module, result: ConversionResult, new_modules: tuple[str, ...], source: str
) -> list[str]:
    """Load `result` into `module`; return the module keys left at init (all in `new_modules`)."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in result.state_dict]
    unexpected = [k for k in result.state_dict if k not in expected]
    not_allowed = [k for k in missing if not any(part in k for part in new_modules)]
    shapes = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in result.state_dict.items()
        if k in expected and v.shape != expected[k].shape
    ]
    problems = {
        "missing": not_allowed,
        "unexpected": unexpected + result.unconverted,
        "shape mismatch": shapes,
    }
    if any(problems.values()):
        details = "; ".join(f"{name}: {keys}" for name, keys in problems.items() if keys)
        raise ValueError(f"cannot load {source} into {type(module).__name__}: {details}")
    module.load_state_dict(result.state_dict, strict=False)
    return missing


def load_swin_weights(swin: nn.Module, path: str) -> list[str]:
    """Load a Swin checkpoint file into a FusedSwin; returns the keys left at init."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"Swin checkpoint not found: {path}")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    final_norm = swin.output_norms == "final"
    result = convert_swin_checkpoint(checkpoint, swin.window_size, final_norm)
    return load_converted(swin, result, SWIN_NEW_MODULES, path)


def load_text_weights(text_tower: nn.Module, name_or_dir: str) -> list[str]:
    """Load RoBERTa / BERT weights (a transformers directory, or a hub name with network) into
    a FusedRoberta / FusedBert; returns the keys left at init (the fusion modules)."""
    from transformers import AutoModel

    pretrained = AutoModel.from_pretrained(name_or_dir)  # its pooler is dropped by TEXT_DROPS
    result = convert_text_state_dict(pretrained.state_dict())
    return load_converted(text_tower, result, TEXT_NEW_MODULES, name_or_dir)
