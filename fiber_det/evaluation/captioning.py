"""COCO-caption metrics through `pycocoevalcap`: BLEU-1..4, METEOR, ROUGE-L, CIDEr, SPICE.

As the COCO caption evaluation server, captions and references are first lowercased and
tokenised by the Stanford PTB tokenizer with punctuation removed; scores are reported x100, as
papers do (FIBER's CIDEr 144.4 is pycocoevalcap's 1.444). The tokenizer, METEOR and SPICE run
on Java. SPICE also needs the Stanford CoreNLP 3.6.0 jars, which pycocoevalcap downloads at
first use; offline they are usually missing, so SPICE is optional (see `spice_jars_missing`).
"""

import json
import logging
import os
import shutil
from collections import defaultdict
from collections.abc import Hashable

from detectron2.data import DatasetCatalog
from detectron2.evaluation import DatasetEvaluator
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.spice import spice as spice_module
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
from transformers import PreTrainedTokenizerBase

from fiber_det.evaluation.common import gather_on_main, report

logger = logging.getLogger(__name__)

CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")
SPICE_JARS_HINT = (
    "fetch them once with network access: python -c 'from pycocoevalcap.spice."
    "get_stanford_models import get_stanford_models; get_stanford_models()'"
)


def _require_java(what: str) -> None:
    if shutil.which("java") is None:
        raise RuntimeError(f"{what} runs on Java, and no `java` is on PATH; install a JRE")


def spice_jars_missing() -> list[str]:
    """The CoreNLP jars SPICE needs that are not in pycocoevalcap's spice/lib folder."""
    lib = os.path.join(os.path.dirname(spice_module.__file__), "lib")
    return [
        os.path.join(lib, jar) for jar in CORENLP_JARS if not os.path.isfile(os.path.join(lib, jar))
    ]


def use_spice(spice: bool | None) -> bool:
    """Whether to compute SPICE: False never; True always (an error names missing jars); None
    where its jars exist (else a warning)."""
    if spice is False:
        return False
    missing = spice_jars_missing()
    if missing:
        message = f"SPICE needs {', '.join(missing)}, which are missing; {SPICE_JARS_HINT}"
        if spice:
            raise FileNotFoundError(message)
        logger.warning(f"{message}. SPICE is left out.")
        return False
    return True


def tokenize_captions(captions: dict[Hashable, list[str]]) -> dict[Hashable, list[str]]:
    """PTB-tokenised, lowercased captions without punctuation, as the COCO evaluation uses."""
    _require_java("The PTB tokenizer of the COCO caption evaluation")
    wrapped = {key: [{"caption": c} for c in texts] for key, texts in captions.items()}
    return PTBTokenizer().tokenize(wrapped)


def _spice_score(references: dict, predictions: dict, required: bool) -> float | None:
    """SPICE (Java, 8 GB heap), or None when it fails and is not required."""
    try:
        return float(spice_module.Spice().compute_score(references, predictions)[0])
    except Exception as exc:
        if required:
            raise
        logger.warning(f"SPICE failed ({exc}); it is left out.")
        return None


def score_captions(
    references: dict[Hashable, list[str]],
    predictions: dict[Hashable, str],
    spice: bool | None = None,
) -> dict[str, float]:
    """COCO caption metrics (x100) of one predicted caption per image against its references.

    Every predicted image needs references; images without a prediction are not scored.
    `spice`: True requires SPICE, False skips it, None computes it where its jars exist.
    """
    if not predictions:
        raise ValueError("no captions to score")
    missing = [key for key in predictions if not references.get(key)]
    if missing:
        raise ValueError(f"predicted images without reference captions, e.g. {missing[:5]}")
    with_spice = use_spice(spice)
    refs = tokenize_captions({key: list(references[key]) for key in predictions})
    hyps = tokenize_captions({key: [caption] for key, caption in predictions.items()})
    bleu = Bleu(4).compute_score(refs, hyps, verbose=0)[0]
    metrics = {f"BLEU-{n + 1}": 100 * float(score) for n, score in enumerate(bleu)}
    _require_java("METEOR")
    metrics["METEOR"] = 100 * float(Meteor().compute_score(refs, hyps)[0])
    metrics["ROUGE-L"] = 100 * float(Rouge().compute_score(refs, hyps)[0])
    metrics["CIDEr"] = 100 * float(Cider().compute_score(refs, hyps)[0])
    spice_value = _spice_score(refs, hyps, bool(spice)) if with_spice else None
    if spice_value is not None:
        metrics["SPICE"] = 100 * spice_value
    return metrics


class CaptionEvaluator(DatasetEvaluator):
    """Reads `inputs[i]["image_id"]` and `outputs[i]["caption"]` (str), or, without "caption",
    `outputs[i]["caption_ids"]` (token ids, FiberCaptionModel) decoded with `tokenizer`
    (special tokens skipped); references are the "captions" of the dataset's records with that
    image_id (e.g. coco_karpathy_test). Writes `captions_<dataset>.json` ([{"image_id",
    "caption"}], the COCO result format)."""

    def __init__(
        self,
        dataset_name: str,
        output_dir: str | None = None,
        spice: bool | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
    ):
        self.dataset_name = dataset_name
        self.output_dir = output_dir
        self.spice = spice
        self.tokenizer = tokenizer
        self._captions: list[tuple[Hashable, str]] = []

    def reset(self) -> None:
        self._captions = []

    def _caption(self, output: dict) -> str:
        if "caption" not in output and "caption_ids" in output:
            if self.tokenizer is None:
                raise ValueError(
                    "outputs carry 'caption_ids': give CaptionEvaluator a tokenizer to decode them"
                )
            ids = output["caption_ids"]
            ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
            return self.tokenizer.decode(ids, skip_special_tokens=True).strip()
        if "caption" not in output:
            raise ValueError(f"outputs need 'caption' or 'caption_ids', got keys {sorted(output)}")
        caption = output["caption"]
        if not isinstance(caption, str):
            raise ValueError(f"outputs 'caption' must be a string, got {type(caption)}")
        return caption

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        for item, output in zip(inputs, outputs, strict=True):
            self._captions.append((item["image_id"], self._caption(output)))

    def evaluate(self) -> dict:
        gathered = gather_on_main(self._captions)
        if gathered is None:
            return {}
        predictions = {}
        for image_id, caption in gathered:
            predictions.setdefault(image_id, caption)  # the first caption of an image counts
        if self.output_dir:
            os.makedirs(self.output_dir, exist_ok=True)
            path = os.path.join(self.output_dir, f"captions_{self.dataset_name}.json")
            with open(path, "w", encoding="utf-8") as handle:
                json.dump([{"image_id": k, "caption": v} for k, v in predictions.items()], handle)
        references = defaultdict(list)
        for record in DatasetCatalog.get(self.dataset_name):
            references[record["image_id"]].extend(record["captions"])
        metrics = score_captions(references, predictions, self.spice)
        metrics["num_images"] = float(len(predictions))
        report(
            f"Captioning {self.dataset_name}",
            metrics,
            self.output_dir,
            f"captioning_{self.dataset_name}.json",
        )
        return {"captioning": metrics}
