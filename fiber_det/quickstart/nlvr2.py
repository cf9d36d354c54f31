"""True / false statements about a pair of synthetic scenes, written as NLVR2 JSON lines.

Statements name only (colour, shape) pairs and shapes seen in at least one of the two images, so
a false statement is never false merely because its words are absent from both:
  "both images contain a red circle ."             "only one image contains a red circle ."
  "the left image contains a red circle ."         "the right image contains a red circle ."
  "the left image has more squares than the right image ."   (and right / left)
Each pair gets statements of alternating truth (the first one's at random), so labels are
balanced and a statement's words alone never give its label away.
"""

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fiber_det.quickstart.formats import ImageRecord
from fiber_det.quickstart.world import plural

Counts = tuple[Counter, Counter]  # (left, right) counts of (colour, shape) pairs


@dataclass(frozen=True)
class Statement:
    """One statement about a pair of images and whether it holds."""

    sentence: str
    label: bool


def _a(colour: str, shape: str) -> str:
    return f"{'an' if colour[0] in 'aeiou' else 'a'} {colour} {shape}"


_COMBO_TEMPLATES: dict[str, Callable[[int, int], bool]] = {  # left count, right count -> truth
    "both images contain {}": lambda left, right: left > 0 and right > 0,
    "only one image contains {}": lambda left, right: (left > 0) != (right > 0),
    "the left image contains {}": lambda left, right: left > 0,
    "the right image contains {}": lambda left, right: right > 0,
}
_SHAPE_TEMPLATES: dict[str, Callable[[int, int], bool]] = {
    "the left image has more {} than the right image": lambda left, right: left > right,
    "the right image has more {} than the left image": lambda left, right: right > left,
}


def pair_statements(left: ImageRecord, right: ImageRecord) -> list[Statement]:
    """Every statement of the templates about (left, right), in a fixed order."""
    combos = (
        Counter((o.colour, o.shape) for o in left.objects),
        Counter((o.colour, o.shape) for o in right.objects),
    )
    shapes = Counter(o.shape for o in left.objects), Counter(o.shape for o in right.objects)
    seen_combos = sorted(set(combos[0]) | set(combos[1]))
    seen_shapes = sorted(set(shapes[0]) | set(shapes[1]))
    statements = []
    for template, holds in _COMBO_TEMPLATES.items():
        for combo in seen_combos:
            truth = holds(combos[0][combo], combos[1][combo])
            statements.append(Statement(template.format(_a(*combo)) + " .", truth))
    for template, holds in _SHAPE_TEMPLATES.items():
        for shape in seen_shapes:
            truth = holds(shapes[0][shape], shapes[1][shape])
            statements.append(Statement(template.format(plural(shape)) + " .", truth))
    return statements


def choose_statements(
    left: ImageRecord, right: ImageRecord, rng: np.random.Generator, count: int
) -> list[Statement]:
    """Up to `count` distinct statements of alternating truth, the first one's drawn at random."""
    pools = {
        truth: [s for s in pair_statements(left, right) if s.label == truth]
        for truth in (True, False)
    }
    chosen, truth = [], bool(rng.integers(2))
    for _ in range(count):
        pool = pools[truth] or pools[not truth]
        if not pool:
            break
        chosen.append(pool.pop(int(rng.integers(len(pool)))))
        truth = not chosen[-1].label
    return chosen


def pair_id(split: str, index: int) -> str:
    """NLVR2's "split-set-pair" id: one set per synthetic pair (so pair 0 of set `index`)."""
    return f"{split}-{index}-0"


def nlvr2_lines(split: str, statements: list[list[Statement]]) -> list[dict]:
    """NLVR2 JSON-lines rows of a split; `statements[i]` are about pair `pair_id(split, i)`."""
    return [
        {
            "identifier": f"{pair_id(split, index)}-{number}",
            "sentence": statement.sentence,
            "label": "True" if statement.label else "False",
            "left_url": f"{pair_id(split, index)}-img0.png",
            "right_url": f"{pair_id(split, index)}-img1.png",
        }
        for index, pair in enumerate(statements)
        for number, statement in enumerate(pair)
    ]
