"""albef_eval / albef_randaug (coarse spec d.2): the eval resize, each RandAugment op on
hand-made images, the op sampling, and seeded determinism."""

import random

import numpy as np
import pytest
import torch
from PIL import Image

from fiber_det.data.transforms import (
    ALBEF_OPS,
    RandomAugment,
    albef_eval,
    albef_randaug,
)


def _photo(seed: int = 0, size: tuple[int, int] = (40, 30)) -> Image.Image:
    values = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(values)


class FixedSign(random.Random):
    """A generator whose random() is fixed (0.9: the positive sign of ALBEF's ops)."""

    def random(self) -> float:
        return 0.9


def test_eval_transform_is_the_plain_bicubic_resize():
    image = _photo()
    expected = np.asarray(image.resize((16, 16), Image.BICUBIC))
    assert np.array_equal(np.asarray(albef_eval(16)(image)), expected)


def test_the_ten_albef_ops():
    assert list(ALBEF_OPS) == [
        "Identity", "AutoContrast", "Equalize", "Brightness", "Sharpness",
        "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate",
    ]  # fmt: skip


def test_photometric_ops_at_magnitude_7():
    flat = Image.new("RGB", (8, 8), (100, 50, 20))
    brighter = ALBEF_OPS["Brightness"](flat, 7, FixedSign())  # factor 7/10 * 1.8 + 0.1 = 1.36
    assert np.asarray(brighter)[0, 0].tolist() == [136, 68, 27]
    ramp = np.tile(np.linspace(50, 100, 8).astype(np.uint8)[None, :, None], (8, 1, 3))
    stretched = np.asarray(ALBEF_OPS["AutoContrast"](Image.fromarray(ramp), 7, FixedSign()))
    # [50, 57, ..., 100] stretched by 255 / 50 from 50, truncated (PIL's lookup table).
    assert stretched[0, :, 0].tolist() == [0, 35, 71, 107, 142, 178, 214, 254]
    image = _photo()
    assert ALBEF_OPS["Identity"](image, 7, FixedSign()) is image


def test_geometric_ops_move_pixels_and_fill_grey():
    canvas = np.zeros((20, 20, 3), dtype=np.uint8)
    canvas[10, 10] = 255
    image = Image.fromarray(canvas)
    # Translation by 7/10 * 10 = 7 pixels; the output reads the input 7 pixels on.
    moved = np.asarray(ALBEF_OPS["TranslateX"](image, 7, FixedSign()))
    assert moved[10, 3].tolist() == [255, 255, 255]
    assert moved[10, 19].tolist() == [128, 128, 128]  # read from outside the image
    moved = np.asarray(ALBEF_OPS["TranslateY"](image, 7, FixedSign()))
    assert moved[3, 10].tolist() == [255, 255, 255]
    # Shear 0.21 along x: row 0 is unchanged, the bright pixel of row 10 moves 2.1 px left.
    sheared = np.asarray(ALBEF_OPS["ShearX"](image, 7, FixedSign())).astype(int)
    assert np.array_equal(sheared[0], canvas[0])
    assert sheared[10].sum(axis=1).argmax() == 8
    rotated = np.asarray(ALBEF_OPS["Rotate"](Image.new("RGB", (20, 20)), 7, FixedSign()))
    assert rotated[0, 0].tolist() == [128, 128, 128] and rotated[10, 10].tolist() == [0, 0, 0]


def test_two_ops_with_replacement_each_half_the_time(monkeypatch):
    calls = []
    augment = RandomAugment(2, 7, rng=random.Random(0))
    names = augment.ops
    for name in names:
        record = lambda image, level, rng, name=name: calls.append(name) or image  # noqa: E731
        monkeypatch.setitem(ALBEF_OPS, name, record)
    for _ in range(4000):
        augment(Image.new("RGB", (2, 2)))
    assert abs(len(calls) / 8000 - 0.5) < 0.02  # 2 draws per image, each applied with p 0.5
    counts = np.array([calls.count(name) for name in names])
    assert counts.min() > 330 and counts.max() < 470  # ~400 each: uniform over the ten ops


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match=r"unknown RandomAugment ops \['Solarize'\]"):
        RandomAugment(ops=("Identity", "Solarize"))
    with pytest.raises(ValueError, match="magnitude must be in \\[0, 10\\], got 12"):
        RandomAugment(magnitude=12)


def test_randaug_is_square_and_reproducible_under_seeds():
    image, transform = _photo(size=(60, 40)), albef_randaug(24)

    def run(seed: int) -> np.ndarray:
        random.seed(seed)
        torch.manual_seed(seed)
        return np.asarray(transform(image))

    first = run(3)
    assert first.shape == (24, 24, 3)
    assert np.array_equal(first, run(3))
    assert not np.array_equal(first, run(4))
