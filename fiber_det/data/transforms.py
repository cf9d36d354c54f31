"""Image transforms of FIBER's coarse fine-tuning (coarse_grained_spec.md d.2), PIL RGB -> PIL RGB.

* `albef_eval(S)`: bicubic resize to S x S, no crop, no aspect preservation (the original's
  `albef`, also used for pre-training).
* `albef_randaug(S)`: RandomResizedCrop(S, scale (0.5, 1.0), bicubic) -> RandomHorizontalFlip
  -> RandomAugment(N=2, M=7), the `albef_randaug` of every fine-tune.

RandomAugment follows the ALBEF / METER RandAugment that microsoft/FIBER uses: N ops drawn
uniformly with replacement from the ten below, each applied with probability 0.5, magnitude M
out of 10: brightness / sharpness factor M/10 * 1.8 + 0.1; shear M/10 * 0.3; translation
M/10 * 10 pixels; rotation M/10 * 30 degrees; geometric ops take a random sign and fill with
grey 128. The ops are torchvision.transforms.functional / PIL operations. Randomness comes from
torch (crop, flip) and python `random` (RandAugment), both seeded per worker by detectron2.
"""

import random
from collections.abc import Callable

import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image

__all__ = ["ALBEF_OPS", "RandomAugment", "albef_eval", "albef_randaug"]

MAX_LEVEL = 10.0
FILL = (128, 128, 128)
Op = Callable[[Image.Image, float, random.Random], Image.Image]


def _signed(value: float, rng: random.Random) -> float:
    return -value if rng.random() < 0.5 else value


def _enhance_factor(level: float) -> float:
    return level / MAX_LEVEL * 1.8 + 0.1


def _affine(image: Image.Image, coefficients: tuple[float, ...]) -> Image.Image:
    """PIL affine: the output pixel (x, y) reads the input at (a x + b y + c, d x + e y + f)."""
    return image.transform(
        image.size, Image.Transform.AFFINE, coefficients, Image.Resampling.BILINEAR, fillcolor=FILL
    )


def _shear_x(image: Image.Image, level: float, rng: random.Random) -> Image.Image:
    return _affine(image, (1, _signed(level / MAX_LEVEL * 0.3, rng), 0, 0, 1, 0))


def _shear_y(image: Image.Image, level: float, rng: random.Random) -> Image.Image:
    return _affine(image, (1, 0, 0, _signed(level / MAX_LEVEL * 0.3, rng), 1, 0))


def _translate_x(image: Image.Image, level: float, rng: random.Random) -> Image.Image:
    return _affine(image, (1, 0, _signed(level / MAX_LEVEL * 10, rng), 0, 1, 0))


def _translate_y(image: Image.Image, level: float, rng: random.Random) -> Image.Image:
    return _affine(image, (1, 0, 0, 0, 1, _signed(level / MAX_LEVEL * 10, rng)))


def _rotate(image: Image.Image, level: float, rng: random.Random) -> Image.Image:
    angle = _signed(level / MAX_LEVEL * 30, rng)
    return TF.rotate(image, angle, T.InterpolationMode.BILINEAR, fill=list(FILL))


ALBEF_OPS: dict[str, Op] = {
    "Identity": lambda image, level, rng: image,
    "AutoContrast": lambda image, level, rng: TF.autocontrast(image),
    "Equalize": lambda image, level, rng: TF.equalize(image),
    "Brightness": lambda image, level, rng: TF.adjust_brightness(image, _enhance_factor(level)),
    "Sharpness": lambda image, level, rng: TF.adjust_sharpness(image, _enhance_factor(level)),
    "ShearX": _shear_x,
    "ShearY": _shear_y,
    "TranslateX": _translate_x,
    "TranslateY": _translate_y,
    "Rotate": _rotate,
}


class RandomAugment:
    """Apply `num_ops` ops drawn uniformly (with replacement) from `ops`, each with
    `probability`, at `magnitude` (0..10). `rng` defaults to python's global `random`."""

    def __init__(
        self,
        num_ops: int = 2,
        magnitude: float = 7,
        probability: float = 0.5,
        ops: tuple[str, ...] = tuple(ALBEF_OPS),
        rng: random.Random | None = None,
    ) -> None:
        unknown = [name for name in ops if name not in ALBEF_OPS]
        if unknown:
            raise ValueError(f"unknown RandomAugment ops {unknown} (known: {list(ALBEF_OPS)})")
        if not 0 <= magnitude <= MAX_LEVEL:
            raise ValueError(f"RandomAugment magnitude must be in [0, 10], got {magnitude}")
        self.num_ops = num_ops
        self.magnitude = magnitude
        self.probability = probability
        self.ops = tuple(ops)
        self.rng = rng

    def __call__(self, image: Image.Image) -> Image.Image:
        rng = self.rng if self.rng is not None else random  # the module: its global generator
        for name in [rng.choice(self.ops) for _ in range(self.num_ops)]:
            if rng.random() < self.probability:
                image = ALBEF_OPS[name](image, self.magnitude, rng)
        return image

    def __repr__(self) -> str:
        return f"RandomAugment(num_ops={self.num_ops}, magnitude={self.magnitude})"


def albef_randaug(image_size: int) -> Callable[[Image.Image], Image.Image]:
    """The fine-tuning augmentation (spec d.2): PIL RGB -> PIL RGB of size S x S."""
    return T.Compose(
        [
            T.RandomResizedCrop(
                image_size, scale=(0.5, 1.0), interpolation=T.InterpolationMode.BICUBIC
            ),
            T.RandomHorizontalFlip(),
            RandomAugment(num_ops=2, magnitude=7),
        ]
    )


def albef_eval(image_size: int) -> Callable[[Image.Image], Image.Image]:
    """The evaluation / pre-training transform: bicubic resize to S x S (PIL RGB -> PIL RGB)."""
    return T.Resize((image_size, image_size), interpolation=T.InterpolationMode.BICUBIC)
