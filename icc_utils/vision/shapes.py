"""The procedural shapes set (an offline stand-in for the paper's conditional data) and its
attribute-combination split.

Each image shows one shape whose ``shape``, ``color`` and ``pattern`` are drawn independently;
``object`` is their combination. :func:`combination_split` holds whole combinations out for
testing, so test images show combinations never seen in training.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..validation import check_int
from .images import ImageSet, test_count


#: Attributes of the procedural shapes set, in the order conditions are listed.
SHAPES_CONDITIONS = ("shape", "color", "pattern")
SHAPES_SHAPES = ("circle", "square", "triangle", "cross")
#: Saturated, mutually distinct fill colours (RGB).
SHAPES_COLORS = {"red": (220, 20, 20), "green": (20, 160, 40), "blue": (30, 70, 220), "yellow": (235, 200, 0)}
SHAPES_PATTERNS = ("solid", "striped", "dotted")
#: Stripes and dots are the fill colour times this factor (a dark shade of the same hue).
SHAPES_MARK_SHADE = 0.3
#: Range (inclusive) of the light grey background level.
SHAPES_BACKGROUND_RANGE = (185, 235)


def _render_shape(shape: str, rgb: tuple[int, int, int], pattern: str, image_size: int, cx: float, cy: float,
                  radius: float, background: int) -> np.ndarray:
    """One shapes-set image: drawn at 4x resolution on a ``4*image_size`` canvas, then box-downsampled.

    ``cx``, ``cy`` and ``radius`` are in reference pixels of a 16x16 image (scaled to ``image_size``).
    Stripes (2 reference px period, horizontal) and dots (every 3rd reference px in x and y) are
    laid on the image grid and painted only inside the shape's mask.
    """
    from PIL import Image, ImageDraw

    canvas = 4 * image_size
    p = canvas / 16.0  # canvas pixels per reference pixel
    x, y, r = cx * p, cy * p, radius * p
    mask_im = Image.new("L", (canvas, canvas), 0)
    draw = ImageDraw.Draw(mask_im)
    if shape == "circle":
        draw.ellipse((x - r, y - r, x + r, y + r), fill=255)
    elif shape == "square":
        h = 0.88 * r  # about the circle's area
        draw.rectangle((x - h, y - h, x + h, y + h), fill=255)
    elif shape == "triangle":
        big = 1.25 * r  # circumradius; vertices shifted so the triangle is centred vertically
        draw.polygon([(x, y - 0.75 * big), (x - 0.866 * big, y + 0.75 * big), (x + 0.866 * big, y + 0.75 * big)],
                     fill=255)
    elif shape == "cross":
        w = 0.45 * r  # arm half-width
        draw.rectangle((x - r, y - w, x + r, y + w), fill=255)
        draw.rectangle((x - w, y - r, x + w, y + r), fill=255)
    else:
        raise ValueError(f"shape={shape!r} is not allowed; choose one of {list(SHAPES_SHAPES)}")
    mask = np.asarray(mask_im) > 127
    yy, xx = np.mgrid[0:canvas, 0:canvas]
    gy, gx = (yy // p).astype(np.int64), (xx // p).astype(np.int64)
    if pattern == "solid":
        marks = np.zeros_like(mask)
    elif pattern == "striped":
        marks = gy % 2 == 1
    elif pattern == "dotted":
        marks = (gy % 3 == 1) & (gx % 3 == 1)
    else:
        raise ValueError(f"pattern={pattern!r} is not allowed; choose one of {list(SHAPES_PATTERNS)}")
    img = np.empty((canvas, canvas, 3), dtype=np.uint8)
    img[...] = background
    img[mask] = rgb
    img[mask & marks] = tuple(int(round(v * SHAPES_MARK_SHADE)) for v in rgb)
    small = Image.fromarray(img).resize((image_size, image_size), resample=Image.Resampling.BOX)
    return np.asarray(small, dtype=np.uint8)


def make_shapes_set(n_images: int = 1200, seed: int = 0, image_size: int = 16, name: str = "shapes") -> ImageSet:
    """A procedurally rendered, offline image set for text-conditioned clustering.

    Each RGB image shows one shape whose ``shape`` (circle, square, triangle, cross), ``color``
    (red, green, blue, yellow) and ``pattern`` (solid, striped = horizontal stripes of 2 px period,
    dotted = dots every 3 px; stripes and dots in a dark shade of the fill colour) are drawn uniformly and independently per image;
    ``object`` is the combination ``f"{color} {pattern} {shape}"`` (48 possible). Nuisance
    variation, also from ``seed``: position jitter of +-2 px, radius 4..5.5 px (of a 16 px image)
    and a light grey background level in 185..235. Drawn at 4x resolution and box-downsampled.
    ``labels`` index ``class_names`` = the sorted objects present; ``attributes`` holds the four
    keys above (string arrays). Deterministic in ``seed``.
    """
    check_int("n_images", n_images, 1)
    check_int("image_size", image_size, 4)
    rng = np.random.default_rng(seed)
    colors = list(SHAPES_COLORS)
    shape_i = rng.integers(0, len(SHAPES_SHAPES), size=n_images)
    color_i = rng.integers(0, len(colors), size=n_images)
    pattern_i = rng.integers(0, len(SHAPES_PATTERNS), size=n_images)
    jitter = rng.uniform(-2.0, 2.0, size=(n_images, 2))
    radius = rng.uniform(4.0, 5.5, size=n_images)
    background = rng.integers(SHAPES_BACKGROUND_RANGE[0], SHAPES_BACKGROUND_RANGE[1] + 1, size=n_images)
    shapes = np.array([SHAPES_SHAPES[i] for i in shape_i])
    cols = np.array([colors[i] for i in color_i])
    patterns = np.array([SHAPES_PATTERNS[i] for i in pattern_i])
    objects = np.array([f"{c} {p} {s}" for c, p, s in zip(cols, patterns, shapes)])
    images = np.stack([
        _render_shape(shapes[i], SHAPES_COLORS[cols[i]], patterns[i], image_size, 8.0 + jitter[i, 0],
                      8.0 + jitter[i, 1], float(radius[i]), int(background[i]))
        for i in range(n_images)])
    class_names = sorted(set(objects.tolist()))
    lookup = {o: k for k, o in enumerate(class_names)}
    labels = np.array([lookup[o] for o in objects], dtype=np.int64)
    return ImageSet(name=name, images=images, labels=labels, class_names=class_names,
                    attributes={"shape": shapes, "color": cols, "pattern": patterns, "object": objects})


def _object_values(imageset: ImageSet, conditions: Sequence[str], object_key: str) -> dict[str, tuple]:
    """Each object's value of every condition (checked to be the same for all its images)."""
    attrs = imageset.attributes or {}
    for key in [object_key, *conditions]:
        if key not in attrs:
            raise ValueError(f"{key!r} is not an attribute of {imageset.name!r}; choose from {sorted(attrs)}")
    table: dict[str, tuple] = {}
    columns = [np.asarray(attrs[k]) for k in conditions]
    for i, obj in enumerate(np.asarray(attrs[object_key])):
        values = tuple(str(col[i]) for col in columns)
        if table.setdefault(str(obj), values) != values:
            raise ValueError(f"object {obj!r} has images with different attribute values "
                             f"({table[str(obj)]} vs {values}); an object must be one attribute combination")
    return table


def combination_split(imageset: ImageSet, test_fraction: float = 0.3, seed: int = 0,
                      conditions: Sequence[str] = SHAPES_CONDITIONS, object_key: str = "object",
                      require_test_coverage: bool = True, max_tries: int = 10_000) -> dict:
    """Split the attribute COMBINATIONS (objects) into train and test (compositional generalisation).

    Test images use objects never seen in training, while every value of every condition still
    appears among the training objects; with ``require_test_coverage`` (default) every value also
    appears among the test objects, so test episodes can use every cluster count. Draws seeded
    permutations (one generator from ``seed``) until the constraints hold; ValueError if none of
    ``max_tries`` does. Returns ``{"train": [...], "test": [...], "seed": seed}`` (sorted object
    lists), which :func:`~icc_utils.vision.images.write_split` / ``read_split`` store.
    """
    table = _object_values(imageset, conditions, object_key)
    objects = sorted(table)
    if len(objects) < 2:
        raise ValueError(f"{imageset.name!r} has {len(objects)} objects; a split needs at least 2")
    n_test = test_count(test_fraction, len(objects), "objects")
    check_int("max_tries", max_tries, 1)
    all_values = [{table[o][k] for o in objects} for k in range(len(conditions))]
    rng = np.random.default_rng(seed)
    for _ in range(max_tries):
        order = rng.permutation(len(objects))
        test = sorted(objects[i] for i in order[:n_test])
        train = sorted(objects[i] for i in order[n_test:])
        ok = all({table[o][k] for o in train} == all_values[k] for k in range(len(conditions)))
        if ok and require_test_coverage:
            ok = all({table[o][k] for o in test} == all_values[k] for k in range(len(conditions)))
        if ok:
            return {"train": train, "test": test, "seed": int(seed)}
    raise ValueError(f"no split of {len(objects)} objects into {len(objects) - n_test} train / {n_test} test found "
                     f"in {max_tries} tries where every value of {list(conditions)} appears in train"
                     + (" and test" if require_test_coverage else "")
                     + "; change test_fraction or pass require_test_coverage=False")
