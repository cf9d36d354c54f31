"""datasets/prepare_deepforest.py: Pascal VOC -> COCO with tiles, on two hand-written files."""

import json

import cv2
import numpy as np
import pytest

from tests.conftest import REPO_ROOT
from tests.tools.tool_module import load_module

VOC = """<annotation>
    <folder>data</folder>
    <filename>{filename}</filename>
    <size><width>{width}</width><height>{height}</height><depth>3</depth></size>
    {objects}
</annotation>"""
OBJECT = """<object><name>{name}</name><difficult>0</difficult>
    <bndbox><xmin>{0}</xmin><ymin>{1}</ymin><xmax>{2}</xmax><ymax>{3}</ymax></bndbox></object>"""


def _write(tmp_path, stem, width, height, objects):
    pixels = np.arange(height * width * 3, dtype=np.uint32).reshape(height, width, 3) % 251
    cv2.imwrite(str(tmp_path / f"{stem}.png"), pixels.astype(np.uint8))
    body = "\n".join(OBJECT.format(*box, name=name) for name, box in objects)
    xml = tmp_path / f"{stem}.xml"
    xml.write_text(VOC.format(filename=f"{stem}.png", width=width, height=height, objects=body))
    return xml


def test_two_images_tiled_with_exact_boxes(tmp_path):
    prepare = load_module(REPO_ROOT / "datasets" / "prepare_deepforest.py")
    # a: 400x200 -> tiles at x 0 and 200. A lies in tile 0; B spans x 180..260: 25% of it in
    # tile 0 (dropped, < 50%), 75% in tile 1 (kept, clipped to x 0..60)
    first = _write(
        tmp_path, "a", 400, 200, [("Tree", (10, 20, 50, 60)), ("Tree", (180, 100, 260, 140))]
    )
    # b: 250x150 -> tiles at x 0 and 50 (the last one ends at the edge), one row of height 150;
    # the shrub lies wholly in both
    second = _write(tmp_path, "b", 250, 150, [("Shrub", (60, 30, 100, 70))])
    out = tmp_path / "out"
    argv = [str(first), str(second), "--out-json", str(out / "c.json")]
    content = prepare.main([*argv, "--out-images", str(out / "img"), "--tile", "200"])
    assert json.loads((out / "c.json").read_text()) == content
    assert content["categories"] == [{"id": 1, "name": "Tree"}, {"id": 2, "name": "Shrub"}]
    assert [(i["file_name"], i["width"], i["height"]) for i in content["images"]] == [
        ("a_0_0.png", 200, 200),
        ("a_200_0.png", 200, 200),
        ("b_0_0.png", 200, 150),
        ("b_50_0.png", 200, 150),
    ]
    boxes = [
        (a["image_id"], a["category_id"], a["bbox"], a["area"]) for a in content["annotations"]
    ]
    assert boxes == [
        (1, 1, [10, 20, 40, 40], 1600),
        (2, 1, [0, 100, 60, 40], 2400),
        (3, 2, [60, 30, 40, 40], 1600),
        (4, 2, [10, 30, 40, 40], 1600),
    ]
    source = cv2.imread(str(tmp_path / "b.png"))
    tile = cv2.imread(str(out / "img" / "b_50_0.png"))
    assert np.array_equal(tile, source[:, 50:250])


def test_missing_image_and_bad_object_are_named(tmp_path):
    prepare = load_module(REPO_ROOT / "datasets" / "prepare_deepforest.py")
    xml = _write(tmp_path, "a", 40, 20, [("Tree", (1, 2, 3, 4))])
    (tmp_path / "a.png").unlink()
    with pytest.raises(FileNotFoundError, match="a.png missing or unreadable"):
        prepare.convert([xml], tmp_path / "out", tile=20)
    xml.write_text(VOC.format(filename="a.png", width=4, height=4, objects="<object/>"))
    with pytest.raises(ValueError, match="<object> 0 lacks <name> or <bndbox>"):
        prepare.read_voc(xml)
