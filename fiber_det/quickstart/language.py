"""Language about a synthetic scene: grounding captions whose phrases carry character spans and
the objects they name, referring expressions with a unique target, and whole-image captions.

Captions are plain words separated by single spaces (punctuation is its own word, as in
Flickr30k Entities), so `caption[start:end]` of a phrase is exactly its words.
"""

from dataclasses import dataclass

import numpy as np

from fiber_det.quickstart.render import Scene, SceneObject
from fiber_det.quickstart.world import plural

RELATION_MARGIN = 10.0  # pixels between centres before "left of" / "above" may be said
DOMINANCE = 1.3  # the main axis must beat the other one by this factor (no diagonal relations)
COUNT_WORDS = ("a", "two", "three", "four", "five", "six", "seven", "eight", "nine")
LISTING_PREFIXES = ("", "a picture of", "an image with", "this scene shows")
RELATION_TEMPLATES = (("", ""), ("", "is"), ("there is", ""))  # (prefix, verb) around "A rel B"
DESCRIPTIONS = (("shape",), ("colour", "shape"), ("size", "shape"), ("size", "colour", "shape"))
# Location words for the extreme object along an axis: (axis 0 = x / 1 = y, direction).
EXTREMES = {
    "on the left": (0, -1),
    "on the right": (0, 1),
    "at the top": (1, -1),
    "at the bottom": (1, 1),
}


@dataclass(frozen=True)
class Phrase:
    """Characters [start, end) of a caption that name the scene objects `objects` (indices)."""

    start: int
    end: int
    objects: tuple[int, ...]


@dataclass(frozen=True)
class Caption:
    """A caption and its grounded phrases, in order of appearance."""

    text: str
    phrases: tuple[Phrase, ...]


class _CaptionBuilder:
    """Joins pieces with single spaces and records the span of every grounded piece."""

    def __init__(self) -> None:
        self._pieces: list[str] = []
        self._length = 0
        self._phrases: list[Phrase] = []

    def add(self, text: str, objects: tuple[int, ...] | None = None) -> "_CaptionBuilder":
        if not text:
            return self
        start = self._length + (1 if self._pieces else 0)
        self._pieces.append(text)
        self._length = start + len(text)
        if objects is not None:
            self._phrases.append(Phrase(start, self._length, objects))
        return self

    def build(self) -> Caption:
        return Caption(" ".join(self._pieces), tuple(self._phrases))


def relation(a: SceneObject, b: SceneObject) -> str | None:
    """ "left of" / "right of" / "above" / "below" when `a` is clearly so placed from `b`."""
    dx, dy = a.centre[0] - b.centre[0], a.centre[1] - b.centre[1]
    if abs(dx) >= RELATION_MARGIN and abs(dx) > DOMINANCE * abs(dy):
        return "left of" if dx < 0 else "right of"
    if abs(dy) >= RELATION_MARGIN and abs(dy) > DOMINANCE * abs(dx):
        return "above" if dy < 0 else "below"
    return None


def _with_article(words: str) -> str:
    return ("an " if words[0] in "aeiou" else "a ") + words


def _group_phrase(obj: SceneObject, count: int) -> str:
    """ "a red square" / "an orange star" / "two red squares"."""
    if count == 1:
        return _with_article(f"{obj.colour} {obj.shape}")
    return f"{COUNT_WORDS[count - 1]} {obj.colour} {plural(obj.shape)}"


def combination_groups(scene: Scene) -> list[tuple[int, ...]]:
    """Object indices grouped by (colour, shape), groups in order of first appearance."""
    groups: dict[tuple[str, str], list[int]] = {}
    for index, obj in enumerate(scene.objects):
        groups.setdefault((obj.colour, obj.shape), []).append(index)
    return [tuple(members) for members in groups.values()]


def _join_listing(builder: _CaptionBuilder, scene: Scene, groups: list[tuple[int, ...]]) -> None:
    """Adds "P1 , P2 and P3" with one grounded phrase per group."""
    for position, members in enumerate(groups):
        if position > 0:
            builder.add("and" if position == len(groups) - 1 else ",")
        builder.add(_group_phrase(scene.objects[members[0]], len(members)), members)


def listing_caption(scene: Scene, rng: np.random.Generator) -> Caption:
    """E.g. "an image with two red squares , a blue circle and a green star ."."""
    groups = combination_groups(scene)
    order = rng.permutation(len(groups))
    chosen = [groups[i] for i in order[: int(rng.integers(1, min(3, len(groups)) + 1))]]
    builder = _CaptionBuilder().add(LISTING_PREFIXES[int(rng.integers(len(LISTING_PREFIXES)))])
    _join_listing(builder, scene, chosen)
    return builder.add(".").build()


def relation_caption(scene: Scene, rng: np.random.Generator) -> Caption | None:
    """E.g. "a red square is left of a green star ." (both objects unique of their kind)."""
    unique = [members[0] for members in combination_groups(scene) if len(members) == 1]
    pairs = [
        (a, b, rel)
        for a in unique
        for b in unique
        if a != b and (rel := relation(scene.objects[a], scene.objects[b])) is not None
    ]
    if not pairs:
        return None
    a, b, rel = pairs[int(rng.integers(len(pairs)))]
    prefix, verb = RELATION_TEMPLATES[int(rng.integers(len(RELATION_TEMPLATES)))]
    builder = _CaptionBuilder().add(prefix).add(_group_phrase(scene.objects[a], 1), (a,))
    builder.add(f"{verb} {rel}".strip()).add(_group_phrase(scene.objects[b], 1), (b,))
    return builder.add(".").build()


def grounding_captions(scene: Scene, rng: np.random.Generator, count: int) -> list[Caption]:
    """Up to `count` distinct captions (listings and relations) about a non-empty scene."""
    captions: list[Caption] = []
    for _ in range(4 * count):
        if len(captions) == count:
            break
        caption = relation_caption(scene, rng) if rng.random() < 0.5 else None
        caption = caption or listing_caption(scene, rng)
        if caption.text not in [c.text for c in captions]:
            captions.append(caption)
    return captions


def scene_caption(scene: Scene, rng: np.random.Generator) -> str:
    """A whole-image caption naming every object: "A red square, two blue circles and a star."."""
    groups = combination_groups(scene)
    phrases = [
        _group_phrase(scene.objects[groups[i][0]], len(groups[i]))
        for i in rng.permutation(len(groups))
    ]
    listing = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    prefix = LISTING_PREFIXES[int(rng.integers(len(LISTING_PREFIXES)))]
    text = f"{prefix} {listing}".strip()
    return text[0].upper() + text[1:] + "."


def _matches(obj: SceneObject, target: SceneObject, attributes: tuple[str, ...]) -> bool:
    return all(getattr(obj, name) == getattr(target, name) for name in attributes)


def _words(target: SceneObject, attributes: tuple[str, ...]) -> str:
    return " ".join(getattr(target, name) for name in attributes)


def _is_extreme(scene: Scene, target: int, rivals: list[int], axis: int, sign: int) -> bool:
    """True when `target` beats every rival along `axis` (0 x, 1 y) in direction `sign`."""
    position = scene.objects[target].centre[axis] * sign
    return all(
        scene.objects[r].centre[axis] * sign <= position - RELATION_MARGIN
        for r in rivals
        if r != target
    )


def referring_candidates(scene: Scene, target: int) -> list[tuple[str, str]]:
    """Every (head, after) such that "the {head} {after}" singles out `target`.

    `head` is the target's noun phrase ("large red square"), the span a RefCOCO-style
    annotation points at; `after` is "", a location ("on the left") or a relation.
    """
    objects, obj = scene.objects, scene.objects[target]
    candidates = []
    for attributes in DESCRIPTIONS:
        alike = [i for i, other in enumerate(objects) if _matches(other, obj, attributes)]
        head = _words(obj, attributes)
        if len(alike) == 1:
            candidates.append((head, ""))
            continue
        for where, (axis, sign) in EXTREMES.items():
            if _is_extreme(scene, target, alike, axis, sign):
                candidates.append((head, where))
    for anchor, other in enumerate(objects):
        rel = relation(obj, other) if anchor != target else None
        anchor_alike = [o for o in objects if (o.colour, o.shape) == (other.colour, other.shape)]
        if rel is None or len(anchor_alike) != 1:
            continue
        for attributes in DESCRIPTIONS[:2]:
            hits = [
                i
                for i, o in enumerate(objects)
                if i != anchor and _matches(o, obj, attributes) and relation(o, other) == rel
            ]
            if hits == [target]:
                anchor_words = f"{other.colour} {other.shape}"
                candidates.append((_words(obj, attributes), f"{rel} the {anchor_words}"))
    return candidates


def referring_expressions(
    scene: Scene, rng: np.random.Generator, count: int
) -> list[tuple[int, Caption]]:
    """Up to `count` (target index, expression) pairs for distinct targets.

    Each expression has one phrase (the target's noun phrase) that names exactly one object.
    """
    found = []
    for target in rng.permutation(len(scene.objects)).tolist():
        candidates = referring_candidates(scene, target)
        if not candidates:
            continue
        head, after = candidates[int(rng.integers(len(candidates)))]
        caption = _CaptionBuilder().add("the").add(head, (target,)).add(after).build()
        found.append((target, caption))
        if len(found) == count:
            break
    return found
