"""Writers for the real dataset formats: COCO instances, MDETR grounding (Flickr30k-style
`final_*` json), MDETR RefCOCO (`finetune_refcoco_*` json), Karpathy `dataset_coco.json`,
JSONL image-caption pairs and Flickr30k Entities `Sentences/*.txt` + `Annotations/*.xml`.

Every writer takes the list of `ImageRecord`s of a split (or of all splits) and returns plain
Python data; ids continue across splits, as MDETR's converters do.
"""

import re
from dataclasses import dataclass, field
from xml.sax.saxutils import escape

from fiber_det.quickstart.language import Caption
from fiber_det.quickstart.render import SceneObject
from fiber_det.quickstart.world import World

# MDETR's Flickr converter gives every box the single category "object" (id 1).
GROUNDING_CATEGORIES = [{"supercategory": "object", "id": 1, "name": "object"}]
GROUNDING_DATASET_NAME = "flickr"
REFEXP_DATASET_NAME = "refcoco"


@dataclass
class ImageRecord:
    """One generated image and everything said about it."""

    image_id: int
    split: str
    file_name: str
    height: int
    width: int
    objects: list[SceneObject]
    annotation_ids: list[int]  # instance id of every object (COCO json, RefCOCO original_id)
    grounding: list[Caption] = field(default_factory=list)
    refexps: list[tuple[int, Caption]] = field(default_factory=list)
    scene_captions: list[str] = field(default_factory=list)


def _image_entry(record: ImageRecord, entry_id: int) -> dict:
    return {
        "file_name": record.file_name,
        "height": record.height,
        "width": record.width,
        "id": entry_id,
    }


def _box_fields(obj: SceneObject) -> dict:
    return {"area": obj.area, "iscrowd": 0, "bbox": list(obj.box)}


def _attributes(obj: SceneObject) -> dict:
    """Extra per-box field (ignored by COCO loaders): the words that describe the object."""
    return {"colour": obj.colour, "shape": obj.shape, "size": obj.size, "texture": obj.texture}


def coco_instances(records: list[ImageRecord], world: World, combos: list) -> dict:
    """COCO detection json: one category per combination in `combos`, other objects unlabeled.

    Annotations carry an extra `attributes` dict (colour, shape, size, texture).
    """
    category_ids = [world.category_id(c, s) for c, s in combos]
    annotations = []
    for record in records:
        for obj, ann_id in zip(record.objects, record.annotation_ids):
            category_id = world.category_id(obj.colour, obj.shape)
            if category_id in category_ids:
                entry = {"id": ann_id, "image_id": record.image_id, "category_id": category_id}
                annotations.append({**entry, **_box_fields(obj), "attributes": _attributes(obj)})
    return {
        "info": {"description": "fiber_det synthetic grounding world"},
        "licenses": [],
        "images": [_image_entry(record, record.image_id) for record in records],
        "annotations": annotations,
        "categories": world.categories(combos),
    }


def mdetr_grounding(records: list[ImageRecord], first_id: int, first_ann_id: int) -> dict:
    """MDETR `final_flickr_separateGT_*` json: one image entry per (image, caption) pair.

    Every object named by a phrase gets one annotation whose `tokens_positive` lists the spans
    of all phrases naming it; `tokens_positive_eval` holds one [span] per phrase.
    """
    images, annotations = [], []
    entry_id, ann_id = first_id, first_ann_id
    for record in records:
        for sentence_id, caption in enumerate(record.grounding):
            entry = _image_entry(record, entry_id)
            entry.update(
                caption=caption.text,
                dataset_name=GROUNDING_DATASET_NAME,
                tokens_negative=[[0, len(caption.text)]],
                sentence_id=sentence_id,
                original_img_id=record.image_id,
                tokens_positive_eval=[[[p.start, p.end]] for p in caption.phrases],
            )
            images.append(entry)
            for index, obj in enumerate(record.objects):
                spans = [[p.start, p.end] for p in caption.phrases if index in p.objects]
                if spans:
                    fields = {"image_id": entry_id, "category_id": 1, "id": ann_id}
                    annotations.append({**_box_fields(obj), **fields, "tokens_positive": spans})
                    ann_id += 1
            entry_id += 1
    return _coco_like(images, annotations, GROUNDING_CATEGORIES)


def mdetr_refexp(records: list[ImageRecord], world: World, first_id: int) -> dict:
    """MDETR `finetune_refcoco_*` json: one entry per expression, one annotation (the target)."""
    images, annotations = [], []
    entry_id = first_id
    for record in records:
        for target, caption in record.refexps:
            span = [caption.phrases[0].start, caption.phrases[0].end]
            entry = _image_entry(record, entry_id)
            entry.update(
                original_id=record.image_id,
                caption=caption.text,
                dataset_name=REFEXP_DATASET_NAME,
                tokens_negative=[],
                tokens_positive_eval=[[span]],
            )
            images.append(entry)
            obj = record.objects[target]
            fields = {
                "image_id": entry_id,
                "category_id": world.category_id(obj.colour, obj.shape),
                "id": entry_id,
                "original_id": record.annotation_ids[target],
                "tokens_positive": [span],
            }
            annotations.append({**_box_fields(obj), **fields})
            entry_id += 1
    return _coco_like(images, annotations, world.categories(world.all_combinations()))


def _coco_like(images: list, annotations: list, categories: list) -> dict:
    return {
        "info": [],
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }


def caption_tokens(raw: str) -> list[str]:
    """Karpathy-style tokens: lower-case words without punctuation."""
    return re.findall(r"[a-z0-9]+", raw.lower())


def karpathy_captions(records: list[ImageRecord]) -> dict:
    """Karpathy `dataset_coco.json`: images with filepath (the split folder), filename, split."""
    images, sentence_id = [], 0
    for imgid, record in enumerate(records):
        sentences = []
        for raw in record.scene_captions:
            tokens = caption_tokens(raw)
            sentences.append({"tokens": tokens, "raw": raw, "imgid": imgid, "sentid": sentence_id})
            sentence_id += 1
        images.append(
            {
                "filepath": record.split,
                "filename": record.file_name,
                "imgid": imgid,
                "split": record.split,
                "sentids": [s["sentid"] for s in sentences],
                "sentences": sentences,
                "cocoid": record.image_id,
            }
        )
    return {"images": images, "dataset": "synthetic"}


def caption_lines(records: list[ImageRecord]) -> list[dict]:
    """JSONL rows {"image": path under the dataset root, "caption", "image_id"}."""
    return [
        {"image": f"images/{r.split}/{r.file_name}", "caption": raw, "image_id": r.image_id}
        for r in records
        for raw in r.scene_captions
    ]


def _entity_ids(record: ImageRecord) -> dict[tuple[int, ...], int]:
    """Flickr30k Entities ids (1-based, per image) of the distinct object sets phrases name."""
    ids: dict[tuple[int, ...], int] = {}
    for caption in record.grounding:
        for phrase in caption.phrases:
            ids.setdefault(phrase.objects, len(ids) + 1)
    return ids


def flickr_sentences(record: ImageRecord) -> str:
    """`Sentences/<id>.txt`: one caption per line, phrases as "[/EN#<id>/other words]"."""
    ids, lines = _entity_ids(record), []
    for caption in record.grounding:
        text, cursor, pieces = caption.text, 0, []
        for phrase in caption.phrases:
            words = text[phrase.start : phrase.end]
            pieces += [text[cursor : phrase.start], f"[/EN#{ids[phrase.objects]}/other {words}]"]
            cursor = phrase.end
        lines.append("".join(pieces) + text[cursor:])
    return "\n".join(lines) + "\n"


def flickr_annotation_xml(record: ImageRecord) -> str:
    """`Annotations/<id>.xml` (Pascal VOC style): one <object> per named box, with every
    entity id that refers to it; xmax = x + w, as MDETR's converter reads w = xmax - xmin."""
    ids = _entity_ids(record)
    lines = [
        "<annotation>",
        f"  <filename>{escape(record.file_name)}</filename>",
        f"  <size><width>{record.width}</width><height>{record.height}</height>"
        "<depth>3</depth></size>",
    ]
    for index, obj in enumerate(record.objects):
        names = [eid for objects, eid in ids.items() if index in objects]
        if not names:
            continue
        x, y, w, h = obj.box
        lines.append("  <object>")
        lines += [f"    <name>{eid}</name>" for eid in names]
        lines.append(
            f"    <bndbox><xmin>{x}</xmin><ymin>{y}</ymin><xmax>{x + w}</xmax>"
            f"<ymax>{y + h}</ymax></bndbox>"
        )
        lines.append("  </object>")
    return "\n".join(lines + ["</annotation>"]) + "\n"
