"""Synthetic geometry scenes with exact captions: a dataset where success is measurable (exact match).

A scene is 1-3 shapes on black, each one of 6 colours x 4 kinds x 2 sizes, laid out on a 64-unit grid
(rendered at any size by scaling). The caption lists the shapes left to right by centre x::

    caption  := object (relation object)*             objects sorted by centre x, ascending
    object   := "a" size colour kind
    size     := "small" | "large"                     10 or 18 grid units wide
    colour   := "red" | "green" | "blue" | "yellow" | "purple" | "white"
    kind     := "circle" | "square" | "triangle" | "diamond"
    relation := "left of" | "above" | "below"         between each object and the next one

Relation of A to the next object B (dx = B.cx - A.cx >= 0, dy = B.cy - A.cy, y grows downwards):
"left of" if dx >= 2|dy|, "above" if dy >= 2dx, "below" if -dy >= 2dx. Scenes in between, scenes whose
consecutive centres are less than 5 units apart in x (their order would hinge on a pixel), and
overlapping shapes (boxes closer than 2 units) are never generated, so every caption is unambiguous.

Splits: a scene belongs to the split its canonical layout hashes to (blake2b), so splits made with the
same fractions never share a scene, whatever the seeds; within a split scenes are distinct. Captions
may repeat across splits (there are few words), identical scenes may not.

Compositional generalisation (Nikolaus et al., "Compositional Generalization in Image Captioning",
CoNLL 2019): with ``hold_out`` colour–kind pairs, no scene of an ordinary split contains a held-out
pair, and the ``compositional`` split contains only scenes with at least one of them. ``max_objects``
(up to ``MAX_OBJECTS``) makes longer scenes than the default 1-3, for length generalisation.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw

GRID = 64
BORDER = 5  # free units at each edge: a mild random crop (augment) cannot cut a shape away
GAP = 2  # boxes of two shapes are at least this far apart along some axis
MIN_DX = 5  # consecutive centres differ by at least this much in x
RATIO = 2.0  # the dominant axis of a relation is at least this many times the other
SIZES = {"small": 10, "large": 18}
COLOURS = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (60, 110, 255),
    "yellow": (240, 220, 40),
    "purple": (170, 70, 230),
    "white": (255, 255, 255),
}
KINDS = ("circle", "square", "triangle", "diamond")
RELATIONS = ("left of", "above", "below")
VOCABULARY = tuple(sorted({"a", *SIZES, *COLOURS, *KINDS, *" ".join(RELATIONS).split()}))
DEFAULT_SPLITS: dict[str, float] = {"train": 0.8, "val": 0.1, "test": 0.1}
COMPOSITIONAL = "compositional"  # the split of scenes that hold a held-out colour-kind pair
MAX_OBJECTS = 5  # 6 shapes rarely fit the grid under the layout rules
Pair = tuple[str, str]  # (colour, kind)


def parse_pairs(text: str) -> frozenset[Pair]:
    """``"red circle, blue square"`` -> {("red", "circle"), ("blue", "square")}; ValueError names the bad
    part and lists the colours and kinds."""
    pairs = set()
    for part in text.split(","):
        words = part.split()
        if len(words) != 2 or words[0] not in COLOURS or words[1] not in KINDS:
            raise ValueError(
                f"{part.strip()!r} is not 'COLOUR KIND' (colours: {', '.join(COLOURS)}; kinds: {', '.join(KINDS)})"
            )
        pairs.add((words[0], words[1]))
    return frozenset(pairs)


def has_pair(scene: Sequence[Shape], pairs: frozenset[Pair]) -> bool:
    """Whether some shape of ``scene`` is one of the (colour, kind) ``pairs``."""
    return any((s.colour, s.kind) in pairs for s in scene)


@dataclass(frozen=True)
class Shape:
    """One shape; ``x, y`` is the top-left corner of its square box on the 64-unit grid."""

    kind: str
    colour: str
    size: str
    x: int
    y: int

    @property
    def side(self) -> int:
        """Side length in pixels of the shape's bounding square."""
        return SIZES[self.size]

    @property
    def centre(self) -> tuple[float, float]:
        """(x, y) of the bounding square's centre, in pixels."""
        return self.x + self.side / 2, self.y + self.side / 2


Scene = tuple[Shape, ...]  # sorted left to right by centre x


def relation(a: Shape, b: Shape) -> str | None:
    """How ``a`` relates to ``b`` (b to the right of a), or None when no relation is clear by ``RATIO``."""
    dx = b.centre[0] - a.centre[0]
    dy = b.centre[1] - a.centre[1]
    if dx >= RATIO * abs(dy):
        return "left of"
    if abs(dy) >= RATIO * dx:
        return "above" if dy > 0 else "below"
    return None


def _apart(a: Shape, b: Shape) -> bool:
    gap_x = max(b.x - (a.x + a.side), a.x - (b.x + b.side))
    gap_y = max(b.y - (a.y + a.side), a.y - (b.y + b.side))
    return max(gap_x, gap_y) >= GAP


def is_valid(scene: Scene) -> bool:
    """Sorted, inside the border, non-overlapping, and every consecutive relation unambiguous."""
    for i, a in enumerate(scene):
        if min(a.x, a.y) < BORDER or max(a.x, a.y) + a.side > GRID - BORDER:
            return False
        if any(not _apart(a, b) for b in scene[i + 1 :]):
            return False
    for a, b in zip(scene, scene[1:]):
        if b.centre[0] - a.centre[0] < MIN_DX or relation(a, b) is None:
            return False
    return True


def _uniform(rng: random.Random, count: int) -> int:
    """0..count-1 from ``rng.random()``: fast, and stable across Python versions (unlike ``randint``)."""
    return int(rng.random() * count)


def _layout(rng: random.Random, n: int, max_tries: int) -> list[tuple[int, int, str]]:
    """Positions and sizes of a valid scene, left to right (plain tuples: this loop is the hot spot)."""
    for _ in range(max_tries):
        boxes: list[tuple[int, int, int]] = []
        for _ in range(n):
            side = SIZES["small"] if rng.random() < 0.5 else SIZES["large"]
            span = GRID - 2 * BORDER - side + 1
            x, y = BORDER + _uniform(rng, span), BORDER + _uniform(rng, span)
            if any(max(x - bx - bs, bx - x - side, y - by - bs, by - y - side) < GAP for bx, by, bs in boxes):
                break
            boxes.append((x, y, side))
        else:
            boxes.sort(key=lambda b: 2 * b[0] + b[2])
            for (ax, ay, a_side), (bx, by, b_side) in zip(boxes, boxes[1:]):
                dx2, dy2 = 2 * bx + b_side - 2 * ax - a_side, abs(2 * by + b_side - 2 * ay - a_side)  # doubled
                if dx2 < 2 * MIN_DX or RATIO * dy2 > dx2 > dy2 / RATIO:
                    break
            else:
                return [(x, y, "small" if side == SIZES["small"] else "large") for x, y, side in boxes]
    raise RuntimeError(f"no valid scene of {n} shapes in {max_tries} tries")


def sample_scene(rng: random.Random, n_objects: int | None = None, max_tries: int = 100_000) -> Scene:
    """A random valid scene of ``n_objects`` (default: uniform 1-3) shapes; uses only ``rng``.

    The layout is drawn by rejection sampling (every valid layout of the drawn sizes equally likely),
    then kinds and colours, uniformly and independently.
    """
    n = n_objects if n_objects is not None else 1 + _uniform(rng, 3)
    colours = tuple(COLOURS)
    return tuple(
        Shape(KINDS[_uniform(rng, 4)], colours[_uniform(rng, 6)], size, x, y)
        for x, y, size in _layout(rng, n, max_tries)
    )


def caption(scene: Scene) -> str:
    """The caption of ``scene`` by the grammar in the module docstring."""
    words: list[str] = []
    for i, shape in enumerate(scene):
        if i:
            link = relation(scene[i - 1], shape)
            assert link is not None, "scenes are laid out with a clear relation between neighbours"
            words.append(link)
        words.append(f"a {shape.size} {shape.colour} {shape.kind}")
    return " ".join(words)


def exact_match_by_shapes(predictions: Sequence[str], captions: Sequence[str]) -> dict[int, tuple[float, int]]:
    """{number of shapes: (exact match, scenes)} of predicted against true captions (normalised as the
    metrics do); a true caption names one shape per "a"."""
    from geometry_os.systems.pixel_llm.plugin_api import normalize

    hits: dict[int, list[bool]] = {}
    for prediction, caption in zip(predictions, captions):
        hits.setdefault(caption.split().count("a"), []).append(normalize(prediction) == normalize(caption))
    return {k: (sum(v) / len(v), len(v)) for k, v in sorted(hits.items())}


def scene_key(scene: Scene) -> str:
    """Canonical text of a scene: equal keys mean identical images."""
    return ";".join(f"{s.kind},{s.colour},{s.size},{s.x},{s.y}" for s in scene)


def split_of(scene: Scene, fractions: Mapping[str, float] = DEFAULT_SPLITS) -> str:
    """The split a scene belongs to: its key's hash, as a number in [0, 1), picks a slice of ``fractions``."""
    digest = hashlib.blake2b(scene_key(scene).encode(), digest_size=8).digest()
    point = int.from_bytes(digest, "big") / 2**64 * sum(fractions.values())
    for name, fraction in fractions.items():
        point -= fraction
        if point < 0:
            return name
    return name  # floating-point rounding at the very end


def _count_drawer(weights: Sequence[float] | None, max_objects: int = 3):
    """None (uniform 1-3 shapes, as ``sample_scene`` draws) or a drawer of a shape count: by ``weights``
    (one per count 1..max_objects), or uniform over 1..max_objects."""
    if not 1 <= max_objects <= MAX_OBJECTS:
        raise ValueError(f"max_objects={max_objects} must be between 1 and {MAX_OBJECTS}")
    if weights is None:
        if max_objects == 3:
            return None
        weights = [1.0] * max_objects
    n = max_objects
    if len(weights) != n or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"shape-count weights must be {n} non-negative numbers (1..{n} shapes), got {list(weights)}")
    total = float(sum(weights))
    bounds = [sum(weights[: k + 1]) / total for k in range(n)]

    def draw(rng: random.Random) -> int:
        u = rng.random()
        return 1 + next((k for k, b in enumerate(bounds) if u < b and weights[k] > 0), n - 1)

    return draw


def make_split(
    n: int,
    seed: int,
    split: str,
    fractions: Mapping[str, float] = DEFAULT_SPLITS,
    shape_weights: Sequence[float] | None = None,
    hold_out: frozenset[Pair] = frozenset(),
    max_objects: int = 3,
) -> list[Scene]:
    """``n`` distinct scenes of ``split``, the same for the same arguments.

    ``shape_weights``: relative frequencies of 1-, 2-, ... ``max_objects``-shape scenes (a training
    curriculum that shows more multi-object scenes); None draws the count uniformly. ``hold_out``:
    (colour, kind) pairs that no scene of an ordinary split contains; split ``COMPOSITIONAL`` draws
    only scenes that contain one (and needs ``hold_out``). Captions follow the same grammar.
    Raises ``ValueError`` for a split without a share (or ``compositional`` without ``hold_out``) and
    ``RuntimeError`` when ``n`` distinct scenes cannot be drawn.
    """
    compositional = split == COMPOSITIONAL
    if compositional and not hold_out:
        raise ValueError(f"split {COMPOSITIONAL!r} needs held-out pairs (hold_out)")
    if not compositional and fractions.get(split, 0) <= 0:
        raise ValueError(f"split {split!r} has no share in {dict(fractions)}")
    draw_count = _count_drawer(shape_weights, max_objects)
    rng = random.Random(f"geometry-os-shapes:{seed}:{split}")
    scenes: list[Scene] = []
    seen: set[str] = set()
    for _ in range(1000 * n + 10_000):
        if len(scenes) == n:
            break
        scene = sample_scene(rng, draw_count(rng) if draw_count else None)
        key = scene_key(scene)
        if key in seen or (hold_out and has_pair(scene, hold_out) != compositional):
            continue
        if compositional or split_of(scene, fractions) == split:
            seen.add(key)
            scenes.append(scene)
    else:
        raise RuntimeError(f"could not draw {n} distinct {split} scenes")
    return scenes


def render_scene(scene: Sequence[Shape], image_size: int = 64) -> Image.Image:
    """Draw ``scene`` on black at ``image_size`` pixels (the 64-unit grid is scaled)."""
    image = Image.new("RGB", (image_size, image_size))
    draw = ImageDraw.Draw(image)
    k = image_size / GRID
    for s in scene:
        x0, y0 = s.x * k, s.y * k
        x1, y1 = (s.x + s.side) * k - 1, (s.y + s.side) * k - 1
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        fill = COLOURS[s.colour]
        if s.kind == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        elif s.kind == "square":
            draw.rectangle((x0, y0, x1, y1), fill=fill)
        elif s.kind == "triangle":
            draw.polygon([(x0, y1), (x1, y1), (cx, y0)], fill=fill)
        else:
            draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=fill)
    return image
