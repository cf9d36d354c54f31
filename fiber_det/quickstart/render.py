"""Draw one synthetic scene: coloured, textured shapes, partly overlapping, on a cluttered grey
background. Boxes are the tight boxes of each object's *visible* pixels (COCO convention)."""

from dataclasses import dataclass

import cv2
import numpy as np

from fiber_det.quickstart.world import COLOURS, SIZES, TEXTURES

# Side length (pixels) of an object's square patch, per size word; the gap makes "small" and
# "large" visually unambiguous.
SIDE_RANGE = {"small": (22, 34), "large": (46, 64)}
MIN_VISIBLE_FRACTION = 0.7  # an object keeps at least this share of its pixels when overlapped
PLACEMENT_TRIES = 40
REPEAT_COMBO_PROB = 0.35  # chance that a new object copies an earlier combination ("two ...")


@dataclass
class SceneObject:
    """One named object. `box` is (x, y, w, h) in pixels, `area` its visible pixel count."""

    colour: str
    shape: str
    size: str
    texture: str
    box: tuple[int, int, int, int]
    area: int

    @property
    def centre(self) -> tuple[float, float]:
        x, y, w, h = self.box
        return x + w / 2.0, y + h / 2.0


@dataclass
class Scene:
    """An image (H, W, 3) uint8 BGR and its objects, in drawing order."""

    image: np.ndarray
    objects: list[SceneObject]


def shape_mask(shape: str, side: int, angle: float) -> np.ndarray:
    """(side, side) uint8 mask in {0, 1} of `shape` centred in the patch, rotated by `angle`."""
    mask = np.zeros((side, side), np.uint8)
    centre, radius = (side - 1) / 2.0, side / 2.0 - 1.0
    if shape == "circle":
        cv2.circle(mask, (round(centre), round(centre)), round(radius), 1, thickness=-1)
        return mask
    if shape == "star":
        radii = np.tile([radius, 0.45 * radius], 5)
        turns = np.arange(10) / 10.0
    elif shape == "cross":
        a, b = 0.34 * radius, radius  # arm half-width, arm length
        corners = [(a, b), (a, a), (b, a), (b, -a), (a, -a), (a, -b)]
        xy = np.array(corners + [(-x, -y) for x, y in corners])
        radii, turns = np.hypot(xy[:, 0], xy[:, 1]), np.arctan2(xy[:, 0], xy[:, 1]) / (2 * np.pi)
    else:
        corners = {"square": 4, "triangle": 3, "hexagon": 6}[shape]
        scale = 1.12 if shape == "square" else 1.0  # a square's corners reach the patch edge
        radii, turns = np.full(corners, radius * scale), np.arange(corners) / corners
        turns = turns + (0.5 / corners if shape == "square" else 0.0)
    theta = 2 * np.pi * turns + np.deg2rad(angle)
    points = np.stack([centre + radii * np.sin(theta), centre - radii * np.cos(theta)], axis=1)
    cv2.fillPoly(mask, [np.round(points).astype(np.int32)], 1)
    return mask


def texture_map(texture: str, side: int, rng: np.random.Generator) -> np.ndarray:
    """(side, side) float32 brightness factors in [0.55, 1] that keep the hue of the colour."""
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    theta = rng.uniform(0, np.pi)
    along = xx * np.cos(theta) + yy * np.sin(theta)
    if texture == "striped":
        period = rng.uniform(5, 9)
        return np.where((along % period) < period / 2, 1.0, 0.6).astype(np.float32)
    if texture == "dotted":
        period = rng.uniform(6, 9)
        dist = np.hypot((xx % period) - period / 2, (yy % period) - period / 2)
        return np.where(dist < period / 4, 0.55, 1.0).astype(np.float32)
    if texture == "gradient":
        span = max(float(along.max() - along.min()), 1.0)
        return (0.6 + 0.4 * (along - along.min()) / span).astype(np.float32)
    return np.ones((side, side), np.float32)


def cluttered_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(H, W, 3) uint8: smooth grey field + noise + grey lines and blobs (never object colours)."""
    coarse = rng.uniform(70, 190, size=(max(height // 24, 2), max(width // 24, 2), 1))
    tint = rng.uniform(-8, 8, size=(1, 1, 3))
    field = cv2.resize((coarse + tint).astype(np.float32), (width, height), cv2.INTER_CUBIC)
    image = np.clip(field + rng.normal(0, 6, size=(height, width, 3)), 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(3, 8))):
        grey = int(rng.integers(40, 220))
        start = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        end = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        cv2.line(image, start, end, (grey, grey, grey), int(rng.integers(1, 4)), cv2.LINE_AA)
    for _ in range(int(rng.integers(1, 4))):
        grey = int(rng.integers(40, 220))
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        axes = (int(rng.integers(4, 16)), int(rng.integers(4, 16)))
        angle = float(rng.uniform(0, 180))
        cv2.ellipse(image, centre, axes, angle, 0, 360, (grey, grey, grey), -1, cv2.LINE_AA)
    return image


def _object_pixels(colour: str, side: int, texture: str, rng: np.random.Generator) -> np.ndarray:
    """(side, side, 3) uint8 BGR: the colour with a small per-object jitter, times the texture."""
    base = np.array(COLOURS[colour], np.float32) + rng.uniform(-18, 18, size=3)
    shade = texture_map(texture, side, rng)[..., None]
    noise = rng.normal(0, 4, size=(side, side, 3))
    return np.clip(base * shade + noise, 0, 255).astype(np.uint8)


def _choose_objects(
    rng: np.random.Generator,
    combos: list[tuple[str, str]],
    required: list[tuple[str, str]],
    count: int,
) -> list[tuple[str, str, str, str]]:
    """(colour, shape, size, texture) of `count` objects in random order, `required` included."""
    chosen = list(required)
    while len(chosen) < count:
        if chosen and rng.random() < REPEAT_COMBO_PROB:
            chosen.append(chosen[int(rng.integers(len(chosen)))])
        else:
            chosen.append(combos[int(rng.integers(len(combos)))])
    order = rng.permutation(len(chosen))
    return [
        (*chosen[i], SIZES[int(rng.integers(2))], TEXTURES[int(rng.integers(len(TEXTURES)))])
        for i in order
    ]


def _try_place(
    owner: np.ndarray, mask: np.ndarray, full_areas: list[int], rng: np.random.Generator
) -> tuple[int, int] | None:
    """Top-left (x, y) where `mask` leaves every earlier object enough visible pixels, or None."""
    height, width = owner.shape
    side, inside = mask.shape[0], mask.astype(bool)
    visible = np.bincount(owner[owner >= 0], minlength=len(full_areas))
    needed = MIN_VISIBLE_FRACTION * np.asarray(full_areas, np.float64)
    for _ in range(PLACEMENT_TRIES):
        x, y = int(rng.integers(1, width - side)), int(rng.integers(1, height - side))
        covered = owner[y : y + side, x : x + side][inside]
        hidden = np.bincount(covered[covered >= 0], minlength=len(full_areas))
        if np.all(visible - hidden >= needed):
            return x, y
    return None


def render_scene(
    rng: np.random.Generator,
    combos: list[tuple[str, str]],
    size: tuple[int, int],
    num_objects: int,
    required: tuple[tuple[str, str], ...] = (),
) -> Scene:
    """Draw `num_objects` objects of `combos` (plus `required` ones) on an image of (H, W) `size`.

    Objects that find no place (crowded image) are skipped; required ones are drawn first.
    """
    height, width = size
    image = cluttered_background(rng, height, width)
    owner = np.full((height, width), -1, np.int32)  # index of the object owning each pixel
    specs, full_areas, placed = _choose_objects(rng, combos, list(required), num_objects), [], []
    specs.sort(key=lambda spec: spec[:2] not in required)  # stable: required objects first
    for colour, shape, size_word, texture in specs:
        side = int(rng.integers(*SIDE_RANGE[size_word], endpoint=True))
        mask = shape_mask(shape, side, float(rng.uniform(-15, 15)))
        where = _try_place(owner, mask, full_areas, rng)
        if where is None:
            continue
        x, y = where
        region, inside = (slice(y, y + side), slice(x, x + side)), mask.astype(bool)
        image[region][inside] = _object_pixels(colour, side, texture, rng)[inside]
        owner[region][inside] = len(placed)
        full_areas.append(int(inside.sum()))
        placed.append((colour, shape, size_word, texture))
    return Scene(image=image, objects=_visible_objects(owner, placed))


def _visible_objects(owner: np.ndarray, placed: list) -> list[SceneObject]:
    """SceneObjects with the tight box and pixel count of what remains visible of each."""
    objects = []
    for index, (colour, shape, size_word, texture) in enumerate(placed):
        ys, xs = np.nonzero(owner == index)
        left, top = int(xs.min()), int(ys.min())
        box = (left, top, int(xs.max()) - left + 1, int(ys.max()) - top + 1)
        objects.append(SceneObject(colour, shape, size_word, texture, box, int(xs.size)))
    return objects
