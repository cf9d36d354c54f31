"""User-facing grounding predictor: BGR images + class names or a caption -> detections.

The one place that joins data (tokenizer, prompts) and modeling (the detector).
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from detectron2.structures import Instances
from transformers import PreTrainedTokenizerBase

from fiber_det.checkpoint import load_weights_strictly
from fiber_det.data.prompts import (
    Span,
    build_detection_prompts,
    build_grounding_prompt,
    clean_name,
)
from fiber_det.data.tokenizer import build_tokenizer, check_tokenizer_fits
from fiber_det.hub import resolve_model_directory
from fiber_det.pretrained import load_pretrained_config, save_pretrained
from fiber_det.vocabulary_cache import (
    Vocabulary,
    cache_identity,
    load_vocabulary_text,
    save_vocabulary_text,
)

logger = logging.getLogger(__name__)
NO_WEIGHTS = (
    "no weights: cfg.MODEL.WEIGHTS is empty. Give a checkpoint there, load a saved model with "
    "GroundingPredictor.from_pretrained(dir), or pass allow_random_weights=True for a randomly "
    "initialised model (its detections mean nothing)"
)


@dataclass
class GroundingResult:
    """Detections of one image in its original coordinates, and the label string of each."""

    instances: Instances
    labels: list[str]


class GroundingPredictor:
    """Load cfg.MODEL.WEIGHTS into the detector and ground text in images.

    `predictor(images, names=[...])` detects the named classes (chunked automatically when the
    vocabulary exceeds the token limit); `predictor(images, caption="...", phrase_spans=...)`
    grounds the phrases of a caption (default: the whole caption as one phrase). `images` is
    one HxWx3 uint8 BGR array (as cv2.imread gives) or a list of them, run `batch_size` at a
    time; the detector groups them by padded size, so a batched call returns what
    one-at-a-time calls return.

    Fast mode for a fixed class list: `vocabulary = predictor.vocabulary(names, cache=path)`
    then `predictor(images, vocabulary=vocabulary)`. Cross-attention is off (the dual-encoder
    switch): the text features are computed once (saved to `path`, reloaded by later runs),
    the image and DyHead towers run once per image and every chunk is only scored.
    """

    def __init__(
        self,
        cfg,
        tokenizer: PreTrainedTokenizerBase | None = None,
        batch_size: int = 8,
        model: torch.nn.Module | None = None,
        allow_random_weights: bool = False,
    ):
        """`cfg.MODEL.WEIGHTS` is loaded strictly (see fiber_det.checkpoint.model_weights), or
        `model` (already built, e.g. just trained) is used as is. Without either, a random model
        is built only when `allow_random_weights`, with a warning."""
        self.cfg = cfg.clone()
        self.tokenizer = tokenizer or build_tokenizer(self.cfg.INPUT.TEXT.TOKENIZER)
        check_tokenizer_fits(self.tokenizer, self.cfg)
        if model is None:
            model = self._build_model(allow_random_weights)
        self.model = model.eval()
        self.resize = T.ResizeShortestEdge(
            [self.cfg.INPUT.MIN_SIZE_TEST] * 2, self.cfg.INPUT.MAX_SIZE_TEST
        )
        self.input_format = self.cfg.INPUT.FORMAT
        self.batch_size = batch_size

    def _build_model(self, allow_random_weights: bool) -> torch.nn.Module:
        weights = self.cfg.MODEL.WEIGHTS
        if not weights and not allow_random_weights:
            raise ValueError(NO_WEIGHTS)
        model = build_model(self.cfg)
        if weights:
            load_weights_strictly(model, weights)
        else:
            logger.warning(
                "GroundingPredictor: RANDOM WEIGHTS (allow_random_weights=True, no "
                "cfg.MODEL.WEIGHTS): the detections of this model mean nothing"
            )
        return model

    @classmethod
    def from_pretrained(
        cls,
        name: str,
        filename: str | None = None,
        *,
        revision: str | None = None,
        cache_dir: str | None = None,
        tokenizer: str | None = None,
        device: str | None = None,
        batch_size: int = 8,
    ) -> "GroundingPredictor":
        """A predictor from a saved-model directory, a hub repository holding one, or an official
        detector checkpoint converted once and cached (`"desco-fiber-base"`, or a repo id with
        `filename`, e.g. `("harold/DesCo", filename="desco_fiber_base.pth")`, or a local file);
        see fiber_det.hub. `tokenizer` replaces roberta-base for official checkpoints."""
        directory = resolve_model_directory(name, filename, revision, cache_dir, tokenizer)
        cfg = load_pretrained_config(directory, device)
        return cls(cfg, build_tokenizer(cfg.INPUT.TEXT.TOKENIZER), batch_size)

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write config.yaml, model.safetensors and the tokenizer files to `directory`."""
        return save_pretrained(directory, self.model, self.cfg, self.tokenizer)

    def prompts(
        self,
        names: Sequence[str] | None = None,
        caption: str | None = None,
        phrase_spans: Sequence[Sequence[Span]] | None = None,
    ) -> tuple[list[dict], list[str]]:
        """The prompt dicts of the data contract and the label string of each label id."""
        max_len = self.cfg.INPUT.TEXT.MAX_QUERY_LEN
        if (names is None) == (caption is None):
            raise ValueError("give exactly one of `names` (class names) or `caption`")
        if names is not None:
            names = checked_class_names(names)
            chunk = self.cfg.TEST.CHUNK_SIZE or None
            return build_detection_prompts(names, self.tokenizer, max_len, chunk), names
        if not isinstance(caption, str):
            raise TypeError(f"caption must be a string, got {type(caption).__name__}")
        if not caption.strip():
            raise ValueError("caption is empty")
        spans = phrase_spans if phrase_spans is not None else [[(0, len(caption))]]
        labels = [" ".join(caption[b:e] for b, e in phrase) for phrase in spans]
        prompt = build_grounding_prompt(caption, spans, self.tokenizer, max_len, strict=True)
        return [prompt], labels

    def vocabulary(self, names: Sequence[str], cache: str | Path | None = None) -> Vocabulary:
        """The fast mode's `Vocabulary` of `names`: fusion-off text features (P, L, D) of its
        prompt chunks, read from `cache` when that file exists (VocabularyCacheMismatch if it
        was built for other names, chunking, tokenizer or text weights), else computed and,
        with `cache`, saved there."""
        prompts, names = self.prompts(names=names)
        if cache is None:
            return Vocabulary(names, prompts, self._encode_vocabulary(prompts))
        identity = cache_identity(
            names,
            self.tokenizer,
            self.model.backbone.text_tower_state_dict(),
            self.cfg.INPUT.TEXT.MAX_QUERY_LEN,
            self.cfg.TEST.CHUNK_SIZE,
        )
        if Path(cache).exists():
            return Vocabulary(names, prompts, load_vocabulary_text(cache, identity))
        text_embedded = self._encode_vocabulary(prompts)
        save_vocabulary_text(cache, text_embedded, identity)
        return Vocabulary(names, prompts, text_embedded)

    @torch.no_grad()
    def _encode_vocabulary(self, prompts: list[dict]) -> torch.Tensor:
        return self.model.encode_vocabulary(prompts).cpu()

    def _input(self, image: np.ndarray, prompts: list[dict]) -> dict:
        check_image(image)
        if self.input_format == "RGB":
            image = image[:, :, ::-1]
        height, width = image.shape[:2]
        transform = self.resize.get_transform(image)
        if min(transform.new_h, transform.new_w) < 1:
            raise ValueError(
                f"image of {height}x{width} pixels: resized to INPUT.MIN_SIZE_TEST / "
                f"MAX_SIZE_TEST its sides become {transform.new_h}x{transform.new_w}; its aspect "
                "ratio is too extreme, crop it first"
            )
        resized = transform.apply_image(image)
        tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)))
        return {"image": tensor, "height": height, "width": width, "prompts": prompts}

    @torch.no_grad()
    def __call__(
        self,
        images: np.ndarray | Sequence[np.ndarray],
        names: Sequence[str] | None = None,
        caption: str | None = None,
        phrase_spans: Sequence[Sequence[Span]] | None = None,
        vocabulary: Vocabulary | None = None,
    ) -> GroundingResult | list[GroundingResult]:
        """Detections for one image (a GroundingResult) or for a list (a list of them); with
        `vocabulary` (and no names / caption) in the fast mode."""
        single = isinstance(images, np.ndarray)
        if vocabulary is None:
            prompts, label_names = self.prompts(names, caption, phrase_spans)
        elif names is None and caption is None:
            prompts, label_names = vocabulary.prompts, vocabulary.names
        else:
            raise ValueError("give `vocabulary` alone, without `names` or `caption`")
        inputs = [self._input(image, prompts) for image in ([images] if single else images)]
        results = []
        for start in range(0, len(inputs), self.batch_size):
            batch = inputs[start : start + self.batch_size]
            if vocabulary is None:
                outputs = self.model(batch)
            else:
                outputs = self.model.inference_unfused(batch, prompts, vocabulary.text_embedded)
            for output in outputs:
                instances = output["instances"].to("cpu")
                labels = [label_names[c] for c in instances.pred_classes.tolist()]
                results.append(GroundingResult(instances, labels))
        return results[0] if single else results


def checked_class_names(names: Sequence[str]) -> list[str]:
    """`names` as a list, or an error naming the first bad entry: a string given instead of a
    list, no names, a name that is not a string or has no letter or digit once cleaned."""
    if isinstance(names, str):
        raise TypeError(
            f"names must be a list of class names, got the string {names!r} (one class per "
            f"character); did you mean names=[{names!r}]?"
        )
    names = list(names)
    if not names:
        raise ValueError("names is empty: give at least one class name")
    for index, name in enumerate(names):
        if not isinstance(name, str):
            raise TypeError(f"names[{index}] is {type(name).__name__} {name!r}, not a string")
        if not any(character.isalnum() for character in clean_name(name)):
            raise ValueError(
                f"names[{index}] = {name!r} has no letter or digit (once cleaned: "
                f"{clean_name(name)!r}), so no token can stand for it"
            )
    return names


def check_image(image: np.ndarray) -> None:
    """An error unless `image` is an HxWx3 uint8 array (BGR 0-255, as cv2.imread gives)."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"expected an HxWx3 uint8 numpy image, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 image, got shape {image.shape}")
    if image.dtype != np.uint8:
        low, high = (float(image.min()), float(image.max())) if image.size else (0.0, 0.0)
        hint = ""
        if np.issubdtype(image.dtype, np.floating) and 0.0 <= low and high <= 1.0:
            hint = "; values in [0, 1]: scale them first, (image * 255).round().astype(np.uint8)"
        raise ValueError(
            f"expected a uint8 image with values 0-255 (BGR, as cv2.imread gives), got "
            f"{image.dtype} with values in [{low:g}, {high:g}]{hint}"
        )
