"""Procedural captioned images of coloured shapes: the toy model's training data and its judge.

A :class:`Scene` is a resolution-free description (shapes, colours, sizes, centres in [0, 1]
image units, background); :func:`render` draws it at any size, so the same scene gives the
64 px full-resolution and the 32 px half-resolution training image. Edges are sharp (2×2
supersampling only). :func:`check_prompt` reads a picture back with the generator's own
knowledge (its palette and shape templates) to say whether it shows what the caption asks.
numpy and scipy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.12, 0.12),
    "green": (0.12, 0.70, 0.20),
    "blue": (0.15, 0.30, 0.95),
    "yellow": (0.95, 0.85, 0.10),
    "purple": (0.60, 0.20, 0.80),
    "orange": (1.00, 0.50, 0.00),
}
# Version 2 of the domain, simplified so that a small model learns it on two CPU cores in hours: three
# kinds (no star), larger objects, plain backgrounds. "star" stays in the vocabulary (and is drawn by
# ``render``), so that text encoders trained on version 1 keep their word indices.
KINDS = ("circle", "square", "triangle")
SIZES: dict[str, tuple[float, float]] = {"small": (0.13, 0.16), "large": (0.20, 0.24)}  # radius, image widths
RELATIONS = ("left of", "right of", "above", "below")
VOCABULARY = ("<pad>", "a", *SIZES, *COLOURS, "circle", "square", "triangle", "star", "left", "right", "of", "above",
              "below")

# Colour reading: a pixel shows palette colour c when c is its nearest palette entry, closer than
# this (RGB in [0, 1]); grey pixels (max - min channel below NEUTRAL) are background. The palette's
# closest pair (orange, yellow) is 0.37 apart; greys are at least 0.44 from every entry.
COLOUR_TOLERANCE = 0.3
NEUTRAL = 0.25
# An object is found when its colour covers at least this share of the smallest object's area.
MIN_AREA_SHARE = 0.3
# Every shape's bounding box stays this far (image units) inside the image.
MARGIN = 0.02


def _star(points: int = 5, inner: float = 0.5) -> np.ndarray:
    angles = -np.pi / 2 + np.arange(2 * points) * np.pi / points
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


# Shapes as polygons (x right, y down) in units of the object's radius; circle is exact.
POLYGONS: dict[str, np.ndarray] = {
    "square": 0.8 * np.array([(-1, -1), (1, -1), (1, 1), (-1, 1)], dtype=float),
    "triangle": np.array([(0.0, -1.0), (1.0, 0.8), (-1.0, 0.8)]),
    "star": _star(),
}


def extent(kind: str) -> tuple[float, float, float, float]:
    """Bounding box ``(x0, y0, x1, y1)`` of a shape of radius 1 centred at 0."""
    if kind == "circle":
        return (-1.0, -1.0, 1.0, 1.0)
    poly = POLYGONS[kind]
    return (*poly.min(axis=0), *poly.max(axis=0))


@dataclass(frozen=True)
class Shape:
    """One object: kind, colour and size words, centre ``(x, y)`` and radius in image widths."""

    kind: str
    colour: str
    size: str
    center: tuple[float, float]
    radius: float

    @property
    def phrase(self) -> str:
        return f"a {self.size} {self.colour} {self.kind}"

    def bbox(self) -> tuple[float, float, float, float]:
        """``(x0, y0, x1, y1)`` in image units."""
        x0, y0, x1, y1 = extent(self.kind)
        (cx, cy), r = self.center, self.radius
        return cx + r * x0, cy + r * y0, cx + r * x1, cy + r * y1


@dataclass(frozen=True)
class Scene:
    """Objects drawn in order over a background.

    relation: for two objects, how the first stands to the second ("left of", ...), else None.
    background: grey levels ``(start, end)`` in [0, 1] of a linear ramp along ``direction``
        (radians; equal levels give a plain background).
    """

    objects: tuple[Shape, ...]
    relation: str | None
    background: tuple[float, float]
    direction: float = 0.0

    @property
    def caption(self) -> str:
        if self.relation is None:
            return self.objects[0].phrase
        return f"{self.objects[0].phrase} {self.relation} {self.objects[1].phrase}"


def _inside_polygon(x: np.ndarray, y: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Even-odd rule, vectorised over points."""
    inside = np.zeros(x.shape, dtype=bool)
    for (x1, y1), (x2, y2) in zip(vertices, np.roll(vertices, -1, axis=0)):
        crosses = (y1 > y) != (y2 > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_cross = (x2 - x1) * (y - y1) / (y2 - y1) + x1
        inside ^= crosses & (x < x_cross)
    return inside


def inside(kind: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Whether points ``(x, y)`` (in radius units, relative to the centre) lie in the shape."""
    if kind == "circle":
        return x * x + y * y <= 1.0
    return _inside_polygon(x, y, POLYGONS[kind])


def _pixel_centres(size: int, supersample: int = 1) -> tuple[np.ndarray, np.ndarray]:
    n = size * supersample
    c = (np.arange(n) + 0.5) / n
    return np.meshgrid(c, c, indexing="xy")


def object_masks(scene: Scene, size: int) -> np.ndarray:
    """Visible pixels of each object at ``size`` px: (n_objects, size, size) bool (later objects on top)."""
    x, y = _pixel_centres(size)
    masks = []
    for shape in scene.objects:
        (cx, cy), r = shape.center, shape.radius
        masks.append(inside(shape.kind, (x - cx) / r, (y - cy) / r))
    masks = np.stack(masks)
    for k in range(len(masks) - 1):
        masks[k] &= ~masks[k + 1 :].any(axis=0)
    return masks


def render(scene: Scene, size: int, supersample: int = 2) -> np.ndarray:
    """The scene as an RGB image (size, size, 3) float32 in [0, 1], edges sharp up to ``supersample``² averaging."""
    x, y = _pixel_centres(size, supersample)
    ramp = (x - 0.5) * np.cos(scene.direction) + (y - 0.5) * np.sin(scene.direction) + 0.5
    start, end = scene.background
    grey = start + (end - start) * np.clip(ramp, 0.0, 1.0)
    image = np.repeat(grey[..., None], 3, axis=-1)
    for shape in scene.objects:
        (cx, cy), r = shape.center, shape.radius
        image[inside(shape.kind, (x - cx) / r, (y - cy) / r)] = COLOURS[shape.colour]
    if supersample > 1:
        image = image.reshape(size, supersample, size, supersample, 3).mean(axis=(1, 3))
    return image.astype(np.float32)


def parse_caption(caption: str) -> Scene:
    """The scene a caption asks for, without positions (centres NaN) or background: for :func:`check_prompt`."""
    words = caption.split()

    def phrase(part: list[str]) -> Shape:
        if len(part) != 4 or part[0] != "a" or part[1] not in SIZES or part[2] not in COLOURS or part[3] not in KINDS:
            raise ValueError(f"caption must read 'a <size> <colour> <kind> [<relation> a <size> <colour> <kind>]', "
                             f"got {caption!r}")
        return Shape(part[3], part[2], part[1], (float("nan"), float("nan")), float(np.mean(SIZES[part[1]])))

    if len(words) == 4:
        return Scene((phrase(words),), None, (0.5, 0.5))
    relation = " ".join(words[4:-4])
    if relation not in RELATIONS:
        raise ValueError(f"caption relation must be one of {RELATIONS}, got {caption!r}")
    return Scene((phrase(words[:4]), phrase(words[-4:])), relation, (0.5, 0.5))


def _place(rng: np.random.Generator, shape_kind: str, radius: float, x_range: tuple[float, float],
           y_range: tuple[float, float]) -> tuple[float, float]:
    """A centre that keeps the shape's bounding box inside the given image-unit ranges, :data:`MARGIN` from their edges."""
    x0, y0, x1, y1 = extent(shape_kind)
    lo_x, hi_x = x_range[0] + MARGIN - radius * x0, x_range[1] - MARGIN - radius * x1
    lo_y, hi_y = y_range[0] + MARGIN - radius * y0, y_range[1] - MARGIN - radius * y1
    return float(rng.uniform(lo_x, max(lo_x, hi_x))), float(rng.uniform(lo_y, max(lo_y, hi_y)))


def random_scene(rng: np.random.Generator) -> Scene:
    """One scene: 1 object (40%) or 2 objects of different colours with a spatial relation (60%), on a
    plain grey background."""
    count = 1 if rng.random() < 0.4 else 2
    colours = rng.choice(list(COLOURS), size=count, replace=False)
    relation = None if count == 1 else str(rng.choice(RELATIONS))
    if relation is None:
        regions = [((0.0, 1.0), (0.0, 1.0))]
    elif relation in ("left of", "right of"):
        halves = [((0.0, 0.5), (0.0, 1.0)), ((0.5, 1.0), (0.0, 1.0))]
        regions = halves if relation == "left of" else halves[::-1]
    else:
        halves = [((0.0, 1.0), (0.0, 0.5)), ((0.0, 1.0), (0.5, 1.0))]
        regions = halves if relation == "above" else halves[::-1]
    objects = []
    for colour, (x_range, y_range) in zip(colours, regions):
        kind = str(rng.choice(KINDS))
        size = str(rng.choice(list(SIZES)))
        radius = float(rng.uniform(*SIZES[size]))
        objects.append(Shape(kind, str(colour), size, _place(rng, kind, radius, x_range, y_range), radius))
    level = float(rng.uniform(0.1, 0.9))
    return Scene(tuple(objects), relation, (level, level), 0.0)


OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def mirrored(scene: Scene) -> Scene:
    """The scene with its relation word flipped and its objects' centres mirrored across the image's middle
    on that relation's axis (left-right for one object), shapes unflipped: the same objects, the other
    arrangement, so that the caption still holds. Its own inverse."""
    vertical = scene.relation in ("above", "below")
    objects = tuple(Shape(o.kind, o.colour, o.size, (o.center[0], 1.0 - o.center[1]) if vertical
                          else (1.0 - o.center[0], o.center[1]), o.radius) for o in scene.objects)
    relation = None if scene.relation is None else OPPOSITE[scene.relation]
    return Scene(objects, relation, scene.background, scene.direction)


def kinds_swapped(scene: Scene) -> Scene:
    """The scene with its objects' kinds changed and all else kept: two objects of different kinds
    exchange kinds (the caption's kind words now bound the other way round; its own inverse); otherwise
    (one object, or two of one kind) each object takes the next kind of :data:`KINDS`. A centre moves
    only as far as needed to keep the new kind's bounding box inside the image (:data:`MARGIN`), which keeps
    the relation (the objects stand in opposite halves)."""
    kinds = [o.kind for o in scene.objects]
    if len(set(kinds)) == 2:
        kinds = kinds[::-1]
    else:
        kinds = [KINDS[(KINDS.index(kind) + 1) % len(KINDS)] for kind in kinds]
    objects = []
    for o, kind in zip(scene.objects, kinds):
        x0, y0, x1, y1 = extent(kind)
        center = tuple(float(min(max(c, MARGIN - o.radius * lo), 1 - MARGIN - o.radius * hi))
                       for c, lo, hi in ((o.center[0], x0, x1), (o.center[1], y0, y1)))
        objects.append(Shape(kind, o.colour, o.size, center, o.radius))
    return Scene(tuple(objects), scene.relation, scene.background, scene.direction)


PARTNERS = {"relation": mirrored, "kind": kinds_swapped}  # training pairs (ralu.demo.train): what each changes


def scenes(seed: int, count: int) -> list[Scene]:
    """``count`` scenes from one seed (the same list for the same seed)."""
    rng = np.random.default_rng(seed)
    return [random_scene(rng) for _ in range(count)]


def render_batch(batch: list[Scene], size: int) -> np.ndarray:
    """Scenes → (B, 3, size, size) float32 in [-1, 1], the model's image convention."""
    return np.stack([render(s, size).transpose(2, 0, 1) * 2.0 - 1.0 for s in batch]).astype(np.float32)


# --- reading pictures back -------------------------------------------------------------------

def colour_labels(image: np.ndarray) -> np.ndarray:
    """Palette index of every pixel, -1 for background/unclear: image (H, W, 3) in [0, 1] → (H, W) int."""
    palette = np.array(list(COLOURS.values()), dtype=np.float32)
    distance = np.linalg.norm(image[..., None, :] - palette, axis=-1)
    labels = distance.argmin(axis=-1)
    saturated = image.max(axis=-1) - image.min(axis=-1) >= NEUTRAL
    return np.where(saturated & (distance.min(axis=-1) < COLOUR_TOLERANCE), labels, -1)


def classify_shape(mask: np.ndarray) -> str:
    """The shape kind whose template, fitted to the mask's bounding box, overlaps it most (IoU)."""
    rows, cols = np.nonzero(mask)
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    y, x = np.mgrid[top:bottom, left:right] + 0.5
    crop = mask[top:bottom, left:right]
    best, best_iou = KINDS[0], -1.0
    for kind in KINDS:
        x0, y0, x1, y1 = extent(kind)
        u = x0 + (x - left) / (right - left) * (x1 - x0)
        v = y0 + (y - top) / (bottom - top) * (y1 - y0)
        template = inside(kind, u, v)
        iou = (template & crop).sum() / max(1, (template | crop).sum())
        if iou > best_iou:
            best, best_iou = kind, iou
    return best


def largest_blob(labels: np.ndarray, colour: str) -> np.ndarray | None:
    """The largest connected blob of palette ``colour`` in :func:`colour_labels` output (bool mask), None if none."""
    from scipy import ndimage

    mask = labels == list(COLOURS).index(colour)
    components, count = ndimage.label(mask)
    if count == 0:
        return None
    areas = ndimage.sum(mask, components, index=np.arange(1, count + 1))
    return components == 1 + int(np.argmax(areas))


def found_blobs(image: np.ndarray, scene: Scene) -> list[np.ndarray | None]:
    """For each of the caption's objects, its colour's largest blob (bool mask), or None where that colour
    covers less than ``MIN_AREA_SHARE`` of a smallest object's area. image (H, W, 3) in [0, 1]."""
    labels = colour_labels(image)
    min_area = MIN_AREA_SHARE * np.pi * (SIZES["small"][0] * image.shape[1]) ** 2
    blobs = [largest_blob(labels, shape.colour) for shape in scene.objects]
    return [blob if blob is not None and blob.sum() >= min_area else None for blob in blobs]


def drawn_kinds(image: np.ndarray, scene: Scene) -> list[str | None]:
    """For each of the caption's objects, the kind its blob (:func:`found_blobs`) reads as
    (:func:`classify_shape`), None where it was not found: which kinds a model draws when asked for which
    (``tools/readback.py``)."""
    return [None if blob is None else classify_shape(blob) for blob in found_blobs(image, scene)]


BINDINGS = ("asked", "other object's", "neither", "missing")


def kind_bindings(asked: list[str], drawn: list[str | None]) -> list[str]:
    """For each object, how its drawn kind (:func:`drawn_kinds`) relates to the caption's: "asked";
    "other object's" (the kind the caption gives the other object, where the two differ: the words are
    bound to the wrong object); "neither"; "missing" (its colour was not found)."""
    labels = []
    for index, (want, got) in enumerate(zip(asked, drawn)):
        others = asked[:index] + asked[index + 1:]
        labels.append("missing" if got is None else "asked" if got == want
                      else "other object's" if got in others else "neither")
    return labels


def check_prompt(image: np.ndarray, scene: Scene) -> dict[str, float | None]:
    """Does ``image`` (H, W, 3) in [0, 1] show what ``scene.caption`` asks, by the generator's own rules?

    colour: share of the caption's objects whose colour covers a blob of at least
        ``MIN_AREA_SHARE`` of a smallest object's area; shape: share whose largest blob of that
        colour is best fitted by the named shape's template; relation: 1/0 whether the blob
        centroids stand as the caption says (None for one object); all: 1 when every check passes.
    """
    blobs = found_blobs(image, scene)
    found = [blob is not None for blob in blobs]
    shaped = [blob is not None and classify_shape(blob) == shape.kind for blob, shape in zip(blobs, scene.objects)]
    centres = [None if blob is None else tuple(np.nonzero(blob)[axis].mean() + 0.5 for axis in (1, 0))
               for blob in blobs]
    relation = None
    if scene.relation is not None:
        a, b = centres
        if a is None or b is None:
            relation = 0.0
        else:
            holds = {"left of": a[0] < b[0], "right of": a[0] > b[0], "above": a[1] < b[1], "below": a[1] > b[1]}
            relation = float(holds[scene.relation])
    checks = found + shaped + ([relation == 1.0] if relation is not None else [])
    return dict(colour=float(np.mean(found)), shape=float(np.mean(shaped)), relation=relation,
                all=float(all(checks)))
