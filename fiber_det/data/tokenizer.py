"""Tokenizers: load a transformers tokenizer from a local directory (or hub name when online),
or train a small byte-level BPE one on the fly (tests, the quickstart's synthetic vocabulary)."""

from collections.abc import Iterable
from pathlib import Path

from tokenizers import ByteLevelBPETokenizer
from transformers import AutoTokenizer, PreTrainedTokenizerBase, RobertaTokenizer

ROBERTA_SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def build_tokenizer(name_or_dir: str) -> PreTrainedTokenizerBase:
    """A fast tokenizer from a local directory, or a hub name (needs network, no offline flag)."""
    path = Path(name_or_dir).expanduser()
    looks_local = path.exists() or name_or_dir.startswith((".", "/", "~"))
    if looks_local and not (path / "tokenizer_config.json").is_file():
        raise FileNotFoundError(
            f"tokenizer directory {path} has no tokenizer_config.json "
            "(save one with tokenizer.save_pretrained(dir))"
        )
    try:
        return AutoTokenizer.from_pretrained(str(path) if looks_local else name_or_dir)
    except OSError as exc:
        raise OSError(
            f"cannot load tokenizer '{name_or_dir}': give a local directory written by "
            "save_pretrained (the released FIBER weights expect roberta-base's vocabulary)"
        ) from exc


def check_tokenizer_fits(tokenizer: PreTrainedTokenizerBase, cfg) -> None:
    """An error when `tokenizer` has more tokens than the model's embedding table rows
    (MODEL.FIBER.TEXT.VOCAB_SIZE): its last token ids would index past the table."""
    vocab_size = cfg.MODEL.FIBER.TEXT.VOCAB_SIZE
    if len(tokenizer) > vocab_size:
        raise ValueError(
            f"the tokenizer {cfg.INPUT.TEXT.TOKENIZER} (INPUT.TEXT.TOKENIZER) has "
            f"{len(tokenizer)} tokens, more than MODEL.FIBER.TEXT.VOCAB_SIZE = {vocab_size} "
            "embedding rows: set MODEL.FIBER.TEXT.VOCAB_SIZE to at least "
            f"{len(tokenizer)} or give the tokenizer the weights were trained with"
        )


def train_byte_level_bpe(
    texts: Iterable[str], out_dir: str | Path, vocab_size: int = 500
) -> PreTrainedTokenizerBase:
    """Train a RoBERTa-style byte-level BPE tokenizer on `texts` and save it to `out_dir`.

    Special tokens get RoBERTa's ids: <s>=0, <pad>=1, </s>=2, <unk>=3, <mask>=4.
    """
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        list(texts), vocab_size=vocab_size, min_frequency=1, special_tokens=ROBERTA_SPECIAL_TOKENS
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    bpe.save_model(str(out_dir))  # vocab.json + merges.txt: RoBERTa's own file format
    RobertaTokenizer.from_pretrained(str(out_dir)).save_pretrained(str(out_dir))
    return build_tokenizer(str(out_dir))
