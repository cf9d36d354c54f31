"""Saved-model directories, Hugging Face style: everything a predictor needs in one folder.

    model_dir/
      config.yaml         the full merged config (MODEL.WEIGHTS and INPUT.TEXT.TOKENIZER name the
                          files beside it)
      model.safetensors   the detector's state dict (safetensors: loading it runs no code)
      tokenizer files     tokenizer_config.json, tokenizer.json, vocab.json, merges.txt, ...

`GroundingPredictor.save_pretrained(dir)` / `tools/train_net.py --save-pretrained dir` write one;
`GroundingPredictor.from_pretrained(dir)` and `tools/demo.py --model dir` read it.
"""

from pathlib import Path

import torch
from detectron2.config import CfgNode
from transformers import PreTrainedTokenizerBase

from fiber_det.checkpoint import AtomicWriteFile, atomic_save_safetensors
from fiber_det.config import get_fiber_cfg
from fiber_det.modeling.backbone.fiber import build_text_config

CONFIG_NAME = "config.yaml"
WEIGHTS_NAME = "model.safetensors"
GROUNDING_ARCHITECTURE = "GroundingDetector"
CONFIG_HEADER = (
    "# fiber_det saved model: MODEL.WEIGHTS and INPUT.TEXT.TOKENIZER are relative to this\n"
    "# folder; load it with GroundingPredictor.from_pretrained(<folder>)\n"
)
# MODEL.FIBER.TEXT keys -> text tower config attributes (RoBERTa or BERT; sizes explicit on save)
TEXT_SIZE_KEYS = {
    "VOCAB_SIZE": "vocab_size",
    "HIDDEN_SIZE": "hidden_size",
    "NUM_LAYERS": "num_hidden_layers",
    "NUM_HEADS": "num_attention_heads",
    "INTERMEDIATE_SIZE": "intermediate_size",
    "MAX_POSITION_EMBEDDINGS": "max_position_embeddings",
    "TYPE_VOCAB_SIZE": "type_vocab_size",
    "LAYER_NORM_EPS": "layer_norm_eps",
    "PAD_TOKEN_ID": "pad_token_id",
}


def standalone_config(cfg: CfgNode) -> CfgNode:
    """`cfg` as a saved directory stores it: the initialisation-only weight paths cleared (the
    text sizes they implied written out), weights and tokenizer named relative to the folder."""
    cfg = cfg.clone()
    cfg.defrost()
    text = cfg.MODEL.FIBER.TEXT
    if text.WEIGHTS:
        text_config = build_text_config(text)
        for key, attribute in TEXT_SIZE_KEYS.items():
            setattr(text, key, getattr(text_config, attribute))
        text.WEIGHTS = ""
    cfg.MODEL.FIBER.SWIN.WEIGHTS = ""
    cfg.MODEL.WEIGHTS = WEIGHTS_NAME
    cfg.INPUT.TEXT.TOKENIZER = "."
    return cfg


def write_pretrained(
    directory: str | Path,
    state_dict: dict[str, torch.Tensor],
    cfg: CfgNode,
    tokenizer: PreTrainedTokenizerBase,
) -> Path:
    """Write a saved-model directory; config.yaml goes last, so a folder holding it is complete.
    Each file is written atomically."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"cannot save a model to {directory}: it is a file")
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(directory))
    tensors = {key: value.detach().cpu().contiguous() for key, value in state_dict.items()}
    metadata = {"format": "pt", "architecture": cfg.MODEL.META_ARCHITECTURE}
    atomic_save_safetensors(tensors, str(directory / WEIGHTS_NAME), metadata)
    with AtomicWriteFile(str(directory / CONFIG_NAME), "w") as handle:
        handle.write(CONFIG_HEADER + standalone_config(cfg).dump())
    return directory


def save_pretrained(
    directory: str | Path,
    model: torch.nn.Module,
    cfg: CfgNode,
    tokenizer: PreTrainedTokenizerBase,
) -> Path:
    """Save a grounding detector (DDP-wrapped or not), its config and tokenizer to `directory`."""
    model = getattr(model, "module", model)
    return write_pretrained(directory, model.state_dict(), cfg, tokenizer)


def load_pretrained_config(directory: str | Path, device: str | None = None) -> CfgNode:
    """The frozen config of a saved-model directory, with the weights and tokenizer paths made
    absolute. `device` overrides MODEL.DEVICE; without it a CUDA device falls back to the CPU
    where CUDA is absent."""
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such model directory")
    config_file = directory / CONFIG_NAME
    if not config_file.is_file():
        raise FileNotFoundError(
            f"{directory} has no {CONFIG_NAME}, so it is not a saved fiber_det model: write one "
            "with GroundingPredictor.save_pretrained(dir) or tools/train_net.py --save-pretrained"
        )
    if not (directory / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(f"{directory} has {CONFIG_NAME} but no {WEIGHTS_NAME}")
    cfg = get_fiber_cfg()
    try:
        cfg.merge_from_file(str(config_file))
    except (KeyError, ValueError, TypeError) as error:
        raise ValueError(
            f"{config_file}: not a config of this fiber_det version: {error}"
        ) from error
    if cfg.MODEL.META_ARCHITECTURE != GROUNDING_ARCHITECTURE:
        raise ValueError(
            f"{config_file}: MODEL.META_ARCHITECTURE is {cfg.MODEL.META_ARCHITECTURE!r}; the "
            f"predictor runs the grounding detector ({GROUNDING_ARCHITECTURE!r})"
        )
    cfg.MODEL.WEIGHTS = str(directory / WEIGHTS_NAME)
    cfg.INPUT.TEXT.TOKENIZER = str(directory)
    if device:
        cfg.MODEL.DEVICE = device
    elif cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    return cfg
