"""The vocabulary of the synthetic grounding world: colours, shapes, sizes, textures, categories.

A category is one (colour, shape) combination, e.g. "red square". A few combinations are held
out: they never appear in the train / val / test splits and only in the `heldout` split, so a
model can be scored on attribute-object pairs it has never seen together (zero-shot).
"""

from dataclasses import dataclass

# Object colours (BGR, as OpenCV draws). Clutter is drawn in greys so colour always means an object.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (40, 35, 215),
    "green": (60, 175, 50),
    "blue": (210, 90, 30),
    "yellow": (35, 215, 230),
    "purple": (165, 45, 140),
    "orange": (20, 130, 250),
    "cyan": (215, 205, 40),
    "pink": (180, 120, 250),
}
SHAPES = ("square", "circle", "triangle", "star", "cross", "hexagon")
SIZES = ("small", "large")
TEXTURES = ("solid", "striped", "dotted", "gradient")
_IRREGULAR_PLURALS = {"cross": "crosses"}


def plural(noun: str) -> str:
    """English plural of a shape noun ("cross" -> "crosses", "star" -> "stars")."""
    return _IRREGULAR_PLURALS.get(noun, noun + "s")


@dataclass(frozen=True)
class World:
    """The colours and shapes in use and the held-out (colour, shape) combinations."""

    colours: tuple[str, ...]
    shapes: tuple[str, ...]
    heldout: tuple[tuple[str, str], ...]

    def category_id(self, colour: str, shape: str) -> int:
        """1-based id of a (colour, shape) combination, stable for given colour/shape lists."""
        return self.colours.index(colour) * len(self.shapes) + self.shapes.index(shape) + 1

    def all_combinations(self) -> list[tuple[str, str]]:
        """Every (colour, shape) pair, in category-id order."""
        return [(colour, shape) for colour in self.colours for shape in self.shapes]

    def seen_combinations(self) -> list[tuple[str, str]]:
        """The combinations that may appear in train / val / test."""
        return [combo for combo in self.all_combinations() if combo not in self.heldout]

    def categories(self, combos: list[tuple[str, str]]) -> list[dict]:
        """COCO `categories` entries for `combos`: name "red square", supercategory the shape."""
        return [
            {"id": self.category_id(c, s), "name": f"{c} {s}", "supercategory": s}
            for c, s in combos
        ]


def build_world(num_colours: int = 5, num_shapes: int = 5, num_heldout: int = 3) -> World:
    """The first `num_colours` colours and `num_shapes` shapes, with `num_heldout` held out.

    Held-out pair i is (colour i, shape i+1): every colour and every shape still occurs in
    training with other partners, so the held-out pairs are new combinations of known words.
    """
    if not 2 <= num_colours <= len(COLOURS):
        raise ValueError(f"num_colours={num_colours}: must be in [2, {len(COLOURS)}]")
    if not 2 <= num_shapes <= len(SHAPES):
        raise ValueError(f"num_shapes={num_shapes}: must be in [2, {len(SHAPES)}]")
    if not 0 <= num_heldout <= min(num_colours, num_shapes) - 1:
        raise ValueError(
            f"num_heldout={num_heldout}: must be in [0, min(num_colours, num_shapes) - 1] "
            f"= [0, {min(num_colours, num_shapes) - 1}]"
        )
    colours = tuple(list(COLOURS)[:num_colours])
    shapes = SHAPES[:num_shapes]
    heldout = tuple((colours[i], shapes[(i + 1) % num_shapes]) for i in range(num_heldout))
    return World(colours=colours, shapes=shapes, heldout=heldout)
