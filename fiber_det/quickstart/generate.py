"""Generate the whole synthetic grounding world on disk: images and every annotation format.

Deterministic: image i of split s is drawn from `numpy.random.default_rng([seed, s, i])`, so the
same seed and sizes give byte-identical files, and no set or hash order is ever iterated.
"""

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from fiber_det.quickstart import downstream, formats
from fiber_det.quickstart.language import (
    COUNT_WORDS,
    grounding_captions,
    referring_expressions,
    scene_caption,
)
from fiber_det.quickstart.render import SIDE_RANGE, render_scene
from fiber_det.quickstart.vqa import KINDS as VQA_KINDS
from fiber_det.quickstart.world import World, build_world

SPLITS = ("train", "val", "test", "heldout")
OUTPUTS = (
    "images",
    "annotations",
    "flickr30k_entities",
    "vqav2",
    "nlvr2",
    "corpus.txt",
    "meta.json",
)
_IMAGE_WRITE_PARAMS = {
    "jpg": [cv2.IMWRITE_JPEG_QUALITY, 92],
    "png": [cv2.IMWRITE_PNG_COMPRESSION, 3],
}


@dataclass
class SyntheticConfig:
    """Sizes and seed of a synthetic world (all defaults sized for the 2-core quickstart)."""

    seed: int = 0
    split_sizes: dict[str, int] = field(
        default_factory=lambda: {"train": 400, "val": 50, "test": 100, "heldout": 100}
    )
    min_side: int = 160  # image height and width are drawn uniformly from [min_side, max_side]
    max_side: int = 224
    min_objects: int = 3
    max_objects: int = 6
    captions_per_image: int = 3  # grounding captions (Flickr-style sentences) per image
    refs_per_image: int = 2  # referring expressions per image (distinct targets)
    scene_captions_per_image: int = 2  # whole-image captions for the coarse stage
    vqa_questions_per_image: int = 4  # VQAv2-format questions per train / val / test image
    vqa_question_kinds: tuple[str, ...] = VQA_KINDS  # which of the VQA question kinds to ask
    nlvr2_statements_per_pair: int = 2  # NLVR2 statements per pair of train / val / test images
    num_colours: int = 5
    num_shapes: int = 5
    num_heldout: int = 3  # (colour, shape) combinations seen only in the heldout split
    image_format: str = "jpg"

    def validate(self) -> None:
        """Raise ValueError naming the first bad field."""
        if set(self.split_sizes) != set(SPLITS) or min(self.split_sizes.values()) < 1:
            raise ValueError(f"split_sizes={self.split_sizes}: need >= 1 image for each {SPLITS}")
        if self.min_side < 2 * SIDE_RANGE["large"][1] + 2 or self.max_side < self.min_side:
            raise ValueError(
                f"min_side={self.min_side}, max_side={self.max_side}: need "
                f"{2 * SIDE_RANGE['large'][1] + 2} <= min_side <= max_side"
            )
        if not 1 <= self.min_objects <= self.max_objects <= len(COUNT_WORDS):
            raise ValueError(f"min_objects / max_objects = {self.min_objects} / {self.max_objects}")
        if self.seed < 0:
            raise ValueError(f"seed={self.seed}: must be >= 0")
        if not self.vqa_question_kinds or not set(self.vqa_question_kinds) <= set(VQA_KINDS):
            raise ValueError(
                f"vqa_question_kinds={self.vqa_question_kinds}: a non-empty subset of {VQA_KINDS}"
            )
        for name in ("vqa_questions_per_image", "nlvr2_statements_per_pair"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 0")
        if self.num_heldout < 1:
            raise ValueError(f"num_heldout={self.num_heldout}: the heldout split needs >= 1")
        if self.image_format not in _IMAGE_WRITE_PARAMS:
            raise ValueError(f"image_format={self.image_format!r}: use one of jpg, png")
        build_world(self.num_colours, self.num_shapes, self.num_heldout)


def _make_record(
    config: SyntheticConfig, world: World, split: str, index: int, ids: tuple[int, int]
) -> tuple[formats.ImageRecord, np.ndarray]:
    """Draw image `index` of `split` (image id and first instance id in `ids`) and its text."""
    rng = np.random.default_rng([config.seed, SPLITS.index(split), index])
    height, width = (int(v) for v in rng.integers(config.min_side, config.max_side + 1, size=2))
    count = int(rng.integers(config.min_objects, config.max_objects + 1))
    if split == "heldout":
        combos = world.all_combinations()
        required = tuple(world.heldout[int(i)] for i in rng.integers(len(world.heldout), size=2))
        required = required[: int(rng.integers(1, 3))]
    else:
        combos, required = world.seen_combinations(), ()
    scene = render_scene(rng, combos, (height, width), count, required)
    image_id, first_ann = ids
    record = formats.ImageRecord(
        image_id=image_id,
        split=split,
        file_name=f"{image_id}.{config.image_format}",
        height=height,
        width=width,
        objects=scene.objects,
        annotation_ids=list(range(first_ann, first_ann + len(scene.objects))),
        grounding=grounding_captions(scene, rng, config.captions_per_image),
        refexps=referring_expressions(scene, rng, config.refs_per_image),
        scene_captions=[scene_caption(scene, rng) for _ in range(config.scene_captions_per_image)],
    )
    return record, scene.image


def _prepare_output(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out_dir} is not empty (pass overwrite=True / --overwrite)")
        for name in OUTPUTS:
            path = out_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    for sub in ("annotations", "flickr30k_entities/Sentences", "flickr30k_entities/Annotations"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)


def _draw_split(
    config: SyntheticConfig, world: World, split: str, out_dir: Path, ids: list[int], log
) -> list[formats.ImageRecord]:
    """Draw and save every image of `split`; `ids` = [next image id, next instance id]."""
    image_dir = out_dir / "images" / split
    image_dir.mkdir(parents=True, exist_ok=True)
    total, start, records = config.split_sizes[split], time.perf_counter(), []
    for index in range(total):
        record, image = _make_record(config, world, split, index, (ids[0], ids[1]))
        ids[0], ids[1] = ids[0] + 1, ids[1] + len(record.objects)
        cv2.imwrite(
            str(image_dir / record.file_name), image, _IMAGE_WRITE_PARAMS[config.image_format]
        )
        records.append(record)
        if (index + 1) % max(total // 5, 1) == 0 or index + 1 == total:
            elapsed = time.perf_counter() - start
            eta = elapsed / (index + 1) * (total - index - 1)
            log(f"[synthetic] {split}: {index + 1}/{total} images, {elapsed:.1f}s, ETA {eta:.1f}s")
    return records


def _write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data) + "\n", encoding="utf-8")


def generate_synthetic_dataset(
    out_dir: str | Path,
    config: SyntheticConfig | None = None,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
) -> dict:
    """Write the synthetic world under `out_dir` (tree in tools/make_synthetic_dataset.py).

    Returns the content of `meta.json` (config, categories, held-out combinations, counts).
    """
    config = config or SyntheticConfig()
    config.validate()
    world = build_world(config.num_colours, config.num_shapes, config.num_heldout)
    out_dir = Path(out_dir)
    _prepare_output(out_dir, overwrite)
    ids, by_split = [1, 1], {}
    for split in SPLITS:
        by_split[split] = _draw_split(config, world, split, out_dir, ids, log)
    _write_annotations(out_dir, world, by_split)
    vqa_counts, vqa_texts = downstream.write_vqa(
        out_dir,
        world,
        by_split,
        config.seed,
        config.vqa_questions_per_image,
        tuple(config.vqa_question_kinds),
    )
    nlvr2_counts, nlvr2_texts = downstream.write_nlvr2(
        out_dir, by_split, config.seed, config.nlvr2_statements_per_pair
    )
    corpus = _corpus(world, by_split, vqa_texts + nlvr2_texts)
    (out_dir / "corpus.txt").write_text("\n".join(corpus) + "\n", encoding="utf-8")
    meta = _meta(config, world, by_split, len(corpus))
    for split in downstream.DOWNSTREAM_SPLITS:
        meta["counts"][split].update(
            vqa_questions=vqa_counts[split], nlvr2_statements=nlvr2_counts[split]
        )
    _write_json(out_dir / "meta.json", meta)
    log(f"[synthetic] wrote {sum(config.split_sizes.values())} images and annotations to {out_dir}")
    return meta


def _write_annotations(out_dir: Path, world: World, by_split: dict) -> None:
    """Every annotation file of every split (ids continue across splits, as in MDETR)."""
    annotations, flickr = out_dir / "annotations", out_dir / "flickr30k_entities"
    entry_id, ann_id, ref_id = 1, 1, 1
    for split, records in by_split.items():
        combos = list(world.heldout) if split == "heldout" else world.seen_combinations()
        _write_json(
            annotations / f"instances_{split}.json", formats.coco_instances(records, world, combos)
        )
        grounding = formats.mdetr_grounding(records, entry_id, ann_id)
        _write_json(annotations / f"final_flickr_separateGT_{split}.json", grounding)
        entry_id += len(grounding["images"])
        ann_id += len(grounding["annotations"])
        refexp = formats.mdetr_refexp(records, world, ref_id)
        _write_json(annotations / f"finetune_refcoco_{split}.json", refexp)
        ref_id += len(refexp["images"])
        rows = formats.caption_lines(records)
        text = "".join(json.dumps(row) + "\n" for row in rows)
        (annotations / f"captions_{split}.jsonl").write_text(text, encoding="utf-8")
        ids = [str(r.image_id) for r in records]
        (flickr / f"{split}.txt").write_text("\n".join(ids) + "\n", encoding="utf-8")
        for record in records:
            stem = str(record.image_id)
            (flickr / "Sentences" / f"{stem}.txt").write_text(
                formats.flickr_sentences(record), encoding="utf-8"
            )
            (flickr / "Annotations" / f"{stem}.xml").write_text(
                formats.flickr_annotation_xml(record)
            )
    all_records = [r for records in by_split.values() for r in records]
    _write_json(annotations / "dataset_coco.json", formats.karpathy_captions(all_records))


def _corpus(world: World, by_split: dict, downstream_texts: list[str]) -> list[str]:
    """Unique lines, in first-seen order: class names, the detection prompt, every caption,
    then the downstream questions, answers and statements."""
    lines = [f"{c} {s}" for c, s in world.all_combinations()]
    lines.append(". ".join(f"{c} {s}" for c, s in world.seen_combinations()))
    for records in by_split.values():
        for record in records:
            lines += [caption.text for caption in record.grounding]
            lines += [caption.text for _, caption in record.refexps]
            lines += record.scene_captions
    return list(dict.fromkeys(lines + downstream_texts))


def _meta(config: SyntheticConfig, world: World, by_split: dict, corpus_lines: int) -> dict:
    counts = {
        split: {
            "images": len(records),
            "objects": sum(len(r.objects) for r in records),
            "grounding_captions": sum(len(r.grounding) for r in records),
            "referring_expressions": sum(len(r.refexps) for r in records),
            "scene_captions": sum(len(r.scene_captions) for r in records),
        }
        for split, records in by_split.items()
    }
    return {
        "config": asdict(config),
        "colours": list(world.colours),
        "shapes": list(world.shapes),
        "heldout_combinations": [list(combo) for combo in world.heldout],
        "categories": world.categories(world.all_combinations()),
        "splits": list(SPLITS),
        "counts": counts,
        "corpus_lines": corpus_lines,
    }
