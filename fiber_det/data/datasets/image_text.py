"""Image-caption data for the coarse stage, as detectron2 dataset dicts.

Every dict has "image_id", "captions" (list[str]) and either "file_name" (an image on disk) or
"arrow_file" + "arrow_row" (an encoded image inside a ViLT/METER arrow file, read lazily by
`read_arrow_image`). Training splits have one dict per (image, caption) pair, as the original
(coarse_grained_spec.md d.1); evaluation splits have one dict per image with all its captions.

Formats: Karpathy split json (`dataset_coco.json`, `dataset_flickr30k.json`), caption corpora as
JSONL ({"image": path, "caption": text} per line) or TSV (image path <TAB> caption), and the
ViLT/METER arrow files (columns `image` (encoded bytes), `caption` (list or str), `image_id`).
The original reads Karpathy *test* as its val split (spec f.9); here val is val.
"""

import functools
import io
import json
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from fiber_det.data.json_lines import parse_json_line

KARPATHY_SPLITS = ("train", "val", "test")


def _flatten_captions(records: list[dict]) -> list[dict]:
    """One dict per (image, caption) pair, captions in order."""
    return [{**r, "captions": [caption]} for r in records for caption in r["captions"]]


def load_karpathy_json(json_file: str, image_root: str, split: str, per_caption: bool) -> list:
    """Images of one Karpathy split; `filepath` (COCO's train2014 / val2014) joins image_root."""
    if split not in KARPATHY_SPLITS:
        raise ValueError(f"Karpathy split must be one of {KARPATHY_SPLITS}, got {split!r}")
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"Karpathy split file {json_file} does not exist")
    with open(json_file, encoding="utf-8") as handle:
        content = json.load(handle)
    if "images" not in content:
        raise ValueError(f"{json_file}: missing top-level field 'images'")
    records = []
    for index, image in enumerate(content["images"]):
        for field in ("filename", "split", "sentences"):
            if field not in image:
                raise ValueError(f"{json_file}: images[{index}] has no field '{field}'")
        if image["split"] != split:
            continue
        file_name = os.path.join(image_root, image.get("filepath", ""), image["filename"])
        image_id = image.get("cocoid", os.path.splitext(image["filename"])[0])
        captions = [sentence["raw"].strip() for sentence in image["sentences"]]
        records.append({"file_name": file_name, "image_id": image_id, "captions": captions})
    return _flatten_captions(records) if per_caption else records


def load_caption_corpus(path: str, image_root: str = "") -> list[dict]:
    """(image, caption) pairs from JSONL ({"image", "caption"}) or TSV (image <TAB> caption)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"caption corpus {path} does not exist")
    is_jsonl = path.endswith((".jsonl", ".json"))
    records = []
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            image, caption = (
                _jsonl_pair(line, path, line_number)
                if is_jsonl
                else _tsv_pair(line, path, line_number)
            )
            file_name = os.path.join(image_root, image)
            records.append({"file_name": file_name, "image_id": image, "captions": [caption]})
    return records


def _jsonl_pair(line: str, path: str, line_number: int) -> tuple[str, str]:
    row = parse_json_line(line, path, line_number, ("image", "caption"))
    return row["image"], row["caption"].strip()


def _tsv_pair(line: str, path: str, line_number: int) -> tuple[str, str]:
    columns = line.rstrip("\n").split("\t")
    if len(columns) != 2 or not columns[0] or not columns[1].strip():
        raise ValueError(
            f"{path}:{line_number}: expected 'image path<TAB>caption', got {len(columns)} column(s)"
        )
    return columns[0], columns[1].strip()


@functools.lru_cache(maxsize=64)
def open_arrow_table(path: str, required_columns: tuple[str, ...] = ()):
    """The pyarrow Table of a ViLT/METER arrow file (memory-mapped; pyarrow imported lazily);
    a missing column of `required_columns` is an error naming the file."""
    import pyarrow as pa

    if not os.path.isfile(path):
        raise FileNotFoundError(f"arrow file {path} does not exist")
    table = pa.ipc.RecordBatchFileReader(pa.memory_map(path, "r")).read_all()
    for column in required_columns:
        if column not in table.column_names:
            raise ValueError(f"{path}: no column '{column}' (has {table.column_names})")
    return table


def load_arrow_captions(paths: list[str], per_caption: bool, text_column: str = "caption") -> list:
    """Images of ViLT/METER arrow files; captions de-duplicated in order (the original's set()
    shuffles them, spec d.1). Image bytes stay in the file until the mapper reads them."""
    records = []
    for path in paths:
        table = open_arrow_table(path, ("image", text_column))
        texts = table.column(text_column).to_pylist()
        ids = (
            table.column("image_id").to_pylist()
            if "image_id" in table.column_names
            else [f"{os.path.basename(path)}:{row}" for row in range(len(texts))]
        )
        for row, (captions, image_id) in enumerate(zip(texts, ids, strict=True)):
            captions = [captions] if isinstance(captions, str) else captions
            captions = list(dict.fromkeys(c.strip() for c in captions))
            records.append(
                {"arrow_file": path, "arrow_row": row, "image_id": image_id, "captions": captions}
            )
    return _flatten_captions(records) if per_caption else records


def read_arrow_image(path: str, row: int) -> Image.Image:
    """The RGB image stored in row `row` of an arrow file's `image` column."""
    table = open_arrow_table(path)
    if not 0 <= row < table.num_rows:
        raise IndexError(f"{path}: row {row} out of range (the file has {table.num_rows} rows)")
    data = table.column("image")[row].as_py()
    return Image.open(io.BytesIO(data)).convert("RGB")


def register_image_text_dataset(
    name: str, loader, evaluator_type: str = "retrieval", **metadata
) -> None:
    """Register `loader()` under `name` with `evaluator_type` ("retrieval" or "caption")."""
    DatasetCatalog.register(name, loader)
    MetadataCatalog.get(name).set(evaluator_type=evaluator_type, **metadata)


_KARPATHY = {
    "coco": ("coco/karpathy/dataset_coco.json", "coco"),
    "flickr30k": ("flickr30k/karpathy/dataset_flickr30k.json", "flickr30k/flickr30k-images"),
}
_ARROW = {
    "coco": "coco_caption_karpathy_{split}",
    "flickr30k": "f30k_caption_karpathy_{split}",
}
_ARROW_CORPORA = {
    "vg_captions_arrow": ["vg"],
    "sbu_captions_arrow": [f"sbu_{i}" for i in range(9)],
    "cc3m_captions_arrow": [f"conceptual_caption_train_{i}" for i in range(31)],
}


def register_all_image_text(root: str) -> None:
    """Builtin names: {coco,flickr30k}_karpathy_{split}[_arrow] (retrieval), the same val / test
    images as {coco,flickr30k}_karpathy_{val,test}_caption[_arrow] (captioning: one record per
    image with all its references), and the arrow caption corpora."""
    for dataset, (json_file, image_root) in _KARPATHY.items():
        for split in KARPATHY_SPLITS:
            per_caption = split == "train"
            json_loader = functools.partial(
                load_karpathy_json,
                os.path.join(root, json_file),
                os.path.join(root, image_root),
                split,
                per_caption,
            )
            arrow = os.path.join(root, "arrow", _ARROW[dataset].format(split=split) + ".arrow")
            arrow_loader = functools.partial(load_arrow_captions, [arrow], per_caption)
            register_image_text_dataset(f"{dataset}_karpathy_{split}", json_loader)
            register_image_text_dataset(f"{dataset}_karpathy_{split}_arrow", arrow_loader)
            if split != "train":
                register_image_text_dataset(
                    f"{dataset}_karpathy_{split}_caption", json_loader, "caption"
                )
                register_image_text_dataset(
                    f"{dataset}_karpathy_{split}_caption_arrow", arrow_loader, "caption"
                )
    for name, stems in _ARROW_CORPORA.items():
        files = [os.path.join(root, "arrow", f"{stem}.arrow") for stem in stems]
        register_image_text_dataset(name, functools.partial(load_arrow_captions, files, True))
