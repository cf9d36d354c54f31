#!/usr/bin/env python
"""Pascal VOC xml (one file per image, as DeepForest ships its NEON tiles) -> a COCO json,
cutting every image into tiles with the boxes clipped to each tile.

    python datasets/prepare_deepforest.py deepforest/data/2019_YELL_2_541000_4977000_image_crop.xml \
        --out-json datasets/trees/train.json --out-images datasets/trees/train --tile 400

Each xml's image is found by its <filename> beside the xml (or in --image-dir). Tiles start
every --stride pixels (default: --tile) and the last row and column end at the image's edge, so
every pixel is covered; an image smaller than a tile is one tile. VOC <bndbox> corners become
COCO [x, y, w, h] with w = xmax - xmin (pixel coordinates as DeepForest reads them). A box cut by
a tile border is clipped to the tile and kept when at least --min-visible of its area lies in
it. Category ids follow the order in which names first appear; tiles without boxes are kept
(detectron2's DATALOADER.FILTER_EMPTY_ANNOTATIONS drops them from training).
"""

import argparse
import json
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import cv2

Box = tuple[float, float, float, float]  # x1, y1, x2, y2


def read_voc(xml_file: Path) -> tuple[str, list[tuple[str, Box]]]:
    """(<filename>, [(name, (xmin, ymin, xmax, ymax)), ...]) of one Pascal VOC file."""
    root = ElementTree.parse(xml_file).getroot()
    filename = root.findtext("filename")
    if not filename:
        raise ValueError(f"{xml_file}: no <filename>")
    objects = []
    for index, item in enumerate(root.iter("object")):
        box = item.find("bndbox")
        name = (item.findtext("name") or "").strip()
        if box is None or not name:
            raise ValueError(f"{xml_file}: <object> {index} lacks <name> or <bndbox>")
        corners = tuple(float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        objects.append((name, corners))
    return filename, objects


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Tile origins along one axis: every `stride`, the last one ending at `length`."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return starts


def clip_to_tile(box: Box, origin: tuple[int, int], size: tuple[int, int]) -> Box | None:
    """`box` clipped to the tile, in tile coordinates; None when nothing of it lies inside."""
    x0, y0 = origin
    x1, y1 = max(box[0], x0), max(box[1], y0)
    x2, y2 = min(box[2], x0 + size[0]), min(box[3], y0 + size[1])
    if x2 <= x1 or y2 <= y1:
        return None
    return x1 - x0, y1 - y0, x2 - x0, y2 - y0


def area(box: Box) -> float:
    return max(box[2] - box[0], 0.0) * max(box[3] - box[1], 0.0)


def convert(
    xml_files: list[Path],
    out_images: Path,
    tile: int,
    stride: int | None = None,
    min_visible: float = 0.5,
    image_dir: Path | None = None,
) -> dict:
    """The COCO dict of all tiles of all images; the tiles are written as PNGs to out_images."""
    stride = stride or tile
    out_images.mkdir(parents=True, exist_ok=True)
    images, annotations, category_ids = [], [], {}
    for xml_file in xml_files:
        filename, objects = read_voc(xml_file)
        image_path = (image_dir or xml_file.parent) / filename
        pixels = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
        if pixels is None:
            raise FileNotFoundError(f"{xml_file}: image {image_path} missing or unreadable")
        height, width = pixels.shape[:2]
        for label, _ in objects:
            category_ids.setdefault(label, len(category_ids) + 1)
        for y0 in tile_starts(height, tile, stride):
            for x0 in tile_starts(width, tile, stride):
                size = (min(tile, width), min(tile, height))
                name = f"{Path(filename).stem}_{x0}_{y0}.png"
                cv2.imwrite(str(out_images / name), pixels[y0 : y0 + size[1], x0 : x0 + size[0]])
                image_id = len(images) + 1
                images.append(
                    {"id": image_id, "file_name": name, "width": size[0], "height": size[1]}
                )
                for label, box in objects:
                    clipped = clip_to_tile(box, (x0, y0), size)
                    if clipped is None or area(clipped) < min_visible * area(box):
                        continue
                    x1, y1, x2, y2 = clipped
                    annotations.append(
                        {
                            "id": len(annotations) + 1,
                            "image_id": image_id,
                            "category_id": category_ids[label],
                            "bbox": [x1, y1, x2 - x1, y2 - y1],
                            "area": area(clipped),
                            "iscrowd": 0,
                        }
                    )
    categories = [{"id": i, "name": name} for name, i in category_ids.items()]
    return {"images": images, "annotations": annotations, "categories": categories}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("xml", nargs="+", type=Path, help="Pascal VOC files, one per image")
    parser.add_argument("--out-json", required=True, type=Path, help="COCO json to write")
    parser.add_argument("--out-images", required=True, type=Path, help="folder for the tiles")
    parser.add_argument("--tile", type=int, default=400, help="tile side in pixels")
    parser.add_argument("--stride", type=int, default=None, help="tile step (default: --tile)")
    parser.add_argument("--min-visible", type=float, default=0.5, help="area kept, 0..1")
    parser.add_argument("--image-dir", type=Path, default=None, help="default: beside the xml")
    args = parser.parse_args(argv)
    content = convert(
        args.xml, args.out_images, args.tile, args.stride, args.min_visible, args.image_dir
    )
    args.out_json.parent.mkdir(parents=True, exist_ok=True)
    args.out_json.write_text(json.dumps(content))
    print(
        f"wrote {args.out_json}: {len(content['images'])} tiles, "
        f"{len(content['annotations'])} boxes, classes {[c['name'] for c in content['categories']]}"
    )
    return content


if __name__ == "__main__":
    main()
