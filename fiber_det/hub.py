"""Models by name: a saved-model directory, a Hugging Face Hub repository holding one, or an
official FIBER-layout detector checkpoint (DesCo-FIBER) converted once and cached.

Downloads go through huggingface_hub (its cache, HF_HUB_OFFLINE and HF_TOKEN apply). A converted
official checkpoint is cached as a saved-model directory under $FIBER_DET_CACHE (default
~/.cache/fiber_det)/converted/<file stem>-<key>, the key following the downloaded file (the hub
cache stores files by content hash), so a new upstream file converts again.
"""

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from huggingface_hub import hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from fiber_det.checkpoint import detect_official_format, load_official_state_dict
from fiber_det.config import get_fiber_cfg
from fiber_det.conversion import convert_and_check, is_trunk_only
from fiber_det.data.tokenizer import build_tokenizer
from fiber_det.pretrained import CONFIG_NAME, WEIGHTS_NAME, write_pretrained

CONFIGS_DIR = Path(__file__).resolve().parents[1] / "configs"
OFFICIAL_CONFIG = "fine_grained/fiber_b.yaml"
OFFICIAL_TOKENIZER = "roberta-base"
# what a saved-model directory on the hub needs (tokenizer files as transformers writes them)
SAVED_MODEL_FILES = [CONFIG_NAME, WEIGHTS_NAME, "*.json", "*.txt"]
ROBERTA_FILES = "config.json vocab.json merges.txt tokenizer.json"


@dataclass(frozen=True)
class OfficialModel:
    """A released detector checkpoint in the official FIBER layout on the hub."""

    repo_id: str
    filename: str
    config: str = OFFICIAL_CONFIG  # under configs/
    tokenizer: str = OFFICIAL_TOKENIZER


# DesCo-FIBER (liunian-harold-li/DesCo, NeurIPS 2023): FIBER-B trained with description
# prompts; its state dict has exactly the official fine-grained FIBER key list
OFFICIAL_MODELS = {"desco-fiber-base": OfficialModel("harold/DesCo", "desco_fiber_base.pth")}


def resolve_model_directory(
    name: str,
    filename: str | None = None,
    revision: str | None = None,
    cache_dir: str | None = None,
    tokenizer: str | None = None,
) -> Path:
    """A local saved-model directory for `name`: a directory as is; an official checkpoint file
    (local path, alias of OFFICIAL_MODELS, or hub repo id + `filename`) converted and cached; a
    hub repository holding a saved model, downloaded. `tokenizer` (directory or hub name)
    replaces roberta-base for official checkpoints; `cache_dir` is the hub cache."""
    if name in OFFICIAL_MODELS:
        official = OFFICIAL_MODELS[name]
        official = replace(official, filename=filename or official.filename)
        return _official_from_hub(official, revision, cache_dir, tokenizer)
    path = Path(name).expanduser()
    if filename is None and path.is_dir():
        return path
    if filename is None and path.is_file():
        tokenizer = tokenizer or OFFICIAL_TOKENIZER
        return converted_directory(path, str(path), OFFICIAL_CONFIG, tokenizer, cache_dir)
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise FileNotFoundError(
            f"{name}: no such model directory or checkpoint file (nor a hub repository id "
            f"'owner/name'; aliases: {', '.join(sorted(OFFICIAL_MODELS))})"
        )
    if filename:
        return _official_from_hub(OfficialModel(name, filename), revision, cache_dir, tokenizer)
    downloaded = _from_hub(
        f"the saved model {name}",
        f"hf download {name}",
        snapshot_download,
        repo_id=name,
        revision=revision,
        cache_dir=cache_dir,
        allow_patterns=SAVED_MODEL_FILES,
    )
    return Path(downloaded)


def _official_from_hub(
    model: OfficialModel, revision: str | None, cache_dir: str | None, tokenizer: str | None
) -> Path:
    checkpoint = _from_hub(
        f"{model.filename} of {model.repo_id}",
        f"hf download {model.repo_id} {model.filename}",
        hf_hub_download,
        repo_id=model.repo_id,
        filename=model.filename,
        revision=revision,
        cache_dir=cache_dir,
    )
    source = f"{model.repo_id}/{model.filename}"
    tokenizer = tokenizer or model.tokenizer
    return converted_directory(Path(checkpoint), source, model.config, tokenizer, cache_dir)


def _from_hub(what: str, command: str, download, **kwargs) -> str:
    """`download(**kwargs)` with errors that say what is missing and how to get it."""
    try:
        return download(**kwargs)
    except LocalEntryNotFoundError as error:
        raise FileNotFoundError(
            f"{what} is not in the Hugging Face cache and the hub cannot be reached (offline, "
            f"or HF_HUB_OFFLINE=1). Download it where the hub is reachable with `{command}` "
            "and copy the cache (~/.cache/huggingface/hub), or give a local path instead"
        ) from error
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as error:
        raise FileNotFoundError(f"{what}: not found on the hub ({type(error).__name__})") from error


def converted_cache_root() -> Path:
    """$FIBER_DET_CACHE, else $XDG_CACHE_HOME/fiber_det (default ~/.cache/fiber_det)."""
    root = os.environ.get("FIBER_DET_CACHE")
    if not root:
        root = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "fiber_det"
    return Path(root).expanduser()


def _file_key(path: Path) -> str:
    """Changes when the file does: its resolved path (a content hash in the hub cache), size
    and modification time."""
    resolved = path.resolve()
    stat = resolved.stat()
    identity = f"{resolved}:{stat.st_size}:{stat.st_mtime_ns}"
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


def converted_directory(
    checkpoint: Path,
    source: str,
    config: str = OFFICIAL_CONFIG,
    tokenizer: str = OFFICIAL_TOKENIZER,
    cache_dir: str | None = None,
) -> Path:
    """The saved-model directory of an official detector checkpoint, converted on first use
    (strictly: every key mapped onto the detector of configs/`config`) and cached; `tokenizer`
    is a directory or a hub name (looked up in the hub cache `cache_dir`)."""
    target = converted_cache_root() / "converted" / f"{checkpoint.stem}-{_file_key(checkpoint)}"
    if (target / CONFIG_NAME).is_file():
        return target
    config_file = CONFIGS_DIR / config
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file}: the config of {source} is missing")
    cfg = get_fiber_cfg()
    cfg.merge_from_file(str(config_file))
    text = load_tokenizer(tokenizer, cache_dir)  # first: fail before the long conversion
    state_dict = load_official_state_dict(str(checkpoint))
    try:
        kind = detect_official_format(state_dict)
    except ValueError as error:
        raise ValueError(f"{source}: {error} (a saved fiber_det model is a directory)") from error
    if kind != "fine" or is_trunk_only(state_dict, kind):
        raise ValueError(
            f"{source} is not a fine-grained detector checkpoint (format '{kind}'"
            f"{', trunk only' if kind == 'fine' else ''}): convert it with "
            "tools/convert_checkpoint.py"
        )
    result, _, errors = convert_and_check(state_dict, kind, cfg)
    if errors:
        shown = "; ".join(errors[:5]) + (f"; ... ({len(errors) - 5} more)" if errors[5:] else "")
        raise ValueError(f"{source} does not convert onto {config}: {shown}")
    provenance = {"source": source, "config": config, "tensors": len(result.state_dict)}
    provenance["dropped"] = sorted(set(result.dropped.values()))
    _write_atomically(target, result.state_dict, cfg, text, provenance)
    return target


def _write_atomically(target: Path, state_dict, cfg, tokenizer, provenance: dict) -> None:
    """Write the directory under a temporary name, then rename it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=".converting-", dir=target.parent))
    try:
        write_pretrained(partial, state_dict, cfg, tokenizer)
        (partial / "conversion.json").write_text(json.dumps(provenance, indent=1) + "\n")
        partial.chmod(0o755)
        os.rename(partial, target)
    except OSError:
        if not (target / CONFIG_NAME).is_file():  # not another process's finished copy
            raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def load_tokenizer(name_or_dir: str, cache_dir: str | None = None) -> PreTrainedTokenizerBase:
    """A tokenizer from a local directory, or from the hub (through its cache) by name."""
    if Path(name_or_dir).expanduser().is_dir():
        return build_tokenizer(name_or_dir)
    try:
        return AutoTokenizer.from_pretrained(name_or_dir, cache_dir=cache_dir)
    except OSError as error:
        raise FileNotFoundError(
            f"the {name_or_dir} tokenizer is not in the Hugging Face cache and the hub cannot be "
            f"reached. Download it where the hub is reachable (`hf download {name_or_dir} "
            f"{ROBERTA_FILES}`) and copy the cache, or pass tokenizer=<a directory written by "
            "AutoTokenizer.save_pretrained> (tools/demo.py --tokenizer)"
        ) from error
