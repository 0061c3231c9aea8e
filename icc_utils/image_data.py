"""Image sets and seeded image-clustering episodes (the paper's image experiments).

An :class:`ImageSet` holds uint8 images (``N x H x W`` grayscale or ``N x H x W x 3`` RGB),
one class index per image, and optional per-image attributes (for conditional clustering).
Sources: scikit-learn's bundled 8x8 digits (:func:`load_digits_set`, no download) and any
ImageFolder-style tree (:func:`load_image_folder`). Out-of-domain test sets come from
:func:`domain_shift`; train/test class splits are disjoint (:func:`class_disjoint_split`).

An :class:`ImageEpisode` is ``n`` image indices from ``c`` distinct classes (every cluster
non-empty, no image twice), shuffled, with labels canonicalised by order of first appearance,
exactly like the numeric episodes of :mod:`icc_utils.data`. Each episode comes from one
explicit integer seed derived from (root seed, split, c, index), so train and test episodes
never share a seed.
"""
from __future__ import annotations

import io
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .data import SPLITS, EpisodeRecord, canonical_labels, load_episodes, save_episodes, write_manifest
from .io import write_json
from .validation import check_choice, check_int

#: Class-disjoint split of the digits. The issue suggested 0-5 / 6-9, but four test classes cannot
#: hold the paper's c=5 test episodes (c=5 never seen in training), so we train on 0-4, test on 5-9.
DIGITS_TRAIN_CLASSES = ("0", "1", "2", "3", "4")
DIGITS_TEST_CLASSES = ("5", "6", "7", "8", "9")
DOMAIN_SHIFTS = ("invert", "rotate", "noise")
NOISE_SIGMA = 40.0
IMAGE_MODES = ("RGB", "L")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
DEFAULT_IMAGE_LENGTH_RANGE = (10, 30)
#: Mixed into every image-episode seed so it never equals a numeric-episode seed by construction.
_IMAGE_SEED_TAG = 1001


# ---------------------------------------------------------------- image sets

@dataclass(frozen=True, eq=False)
class ImageSet:
    """Images with one class index per image.

    ``labels`` index ``class_names``; ``paths`` (optional) name each image's source file;
    ``attributes`` (optional) map a key to one value per image (conditional clustering).
    """

    name: str
    images: np.ndarray = field(repr=False)
    labels: np.ndarray = field(repr=False)
    class_names: list[str]
    paths: list[str] | None = field(default=None, repr=False)
    attributes: dict[str, np.ndarray] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        images, labels = self.images, self.labels
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
            raise ValueError(f"images must be a uint8 numpy array, got {type(images).__name__} "
                             f"{getattr(images, 'dtype', '')}")
        if not (images.ndim == 3 or (images.ndim == 4 and images.shape[-1] == 3)):
            raise ValueError(f"images has shape {images.shape}; it must be (N, H, W) or (N, H, W, 3)")
        if not isinstance(labels, np.ndarray) or labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError("labels must be a 1-D integer numpy array")
        if len(labels) != len(images):
            raise ValueError(f"labels has {len(labels)} entries but there are {len(images)} images")
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"class_names has duplicates: {list(self.class_names)}")
        if len(labels) and (labels.min() < 0 or labels.max() >= len(self.class_names)):
            raise ValueError(f"labels must lie in [0, {len(self.class_names) - 1}] (indices into class_names)")
        if self.paths is not None and len(self.paths) != len(images):
            raise ValueError(f"paths has {len(self.paths)} entries but there are {len(images)} images")
        for key, values in (self.attributes or {}).items():
            if len(values) != len(images):
                raise ValueError(f"attributes[{key!r}] has {len(values)} entries but there are {len(images)} images")

    @property
    def n_images(self) -> int:
        return int(len(self.images))

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def class_counts(self) -> dict[str, int]:
        """Number of images per class name (every class listed, zero included)."""
        counts = np.bincount(self.labels, minlength=self.n_classes)
        return {name: int(counts[i]) for i, name in enumerate(self.class_names)}

    def subset(self, indices: Sequence[int] | np.ndarray, name: str | None = None) -> "ImageSet":
        """The images at ``indices`` (in that order); class names and label indices are unchanged."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(idx) and (idx.min() < 0 or idx.max() >= self.n_images):
            raise ValueError(f"indices out of range; they must lie in [0, {self.n_images - 1}]")
        return ImageSet(
            name=name or self.name,
            images=self.images[idx],
            labels=self.labels[idx],
            class_names=list(self.class_names),
            paths=None if self.paths is None else [self.paths[i] for i in idx],
            attributes=None if self.attributes is None else {k: np.asarray(v)[idx] for k, v in self.attributes.items()},
        )

    def classes_subset(self, class_names: Iterable[str], name: str | None = None) -> "ImageSet":
        """Only the images of ``class_names``; labels stay indices into the ORIGINAL ``class_names``."""
        wanted = [str(c) for c in class_names]
        unknown = [c for c in wanted if c not in self.class_names]
        if unknown:
            raise ValueError(f"class_names {unknown} are not in {self.name!r}; choose from {list(self.class_names)}")
        keep = np.isin(self.labels, [self.class_names.index(c) for c in wanted])
        return self.subset(np.flatnonzero(keep), name=name)


def load_digits_set() -> ImageSet:
    """scikit-learn's bundled digits (1,797 8x8 images), scaled from 0..16 to uint8 0..255."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * 255.0 / 16.0).astype(np.uint8)
    return ImageSet(name="digits", images=images, labels=np.asarray(digits.target, dtype=np.int64),
                    class_names=[str(i) for i in range(10)])


def domain_shift(imageset: ImageSet, kind: str, seed: int = 0) -> ImageSet:
    """An out-of-domain copy: ``invert`` (255 - x), ``rotate`` (90 degrees counter-clockwise,
    ``np.rot90``) or ``noise`` (seeded Gaussian noise, sigma 40, clipped to 0..255)."""
    check_choice("kind", kind, DOMAIN_SHIFTS)
    x = imageset.images
    if kind == "invert":
        out = 255 - x
    elif kind == "rotate":
        out = np.ascontiguousarray(np.rot90(x, k=1, axes=(1, 2)))
    else:  # noise
        rng = np.random.default_rng(seed)
        noisy = x.astype(np.float64) + rng.normal(0.0, NOISE_SIGMA, size=x.shape)
        out = np.clip(np.round(noisy), 0, 255)
    return ImageSet(name=f"{imageset.name}-{kind}", images=out.astype(np.uint8), labels=imageset.labels.copy(),
                    class_names=list(imageset.class_names), paths=imageset.paths,
                    attributes=imageset.attributes)


def load_image_folder(root: str | Path, image_size: int | None = None, mode: str = "RGB") -> ImageSet:
    """Load an ImageFolder tree ``root/<class>/<image>`` (classes and files sorted by name).

    ``mode`` is ``"RGB"`` (``N x H x W x 3``) or ``"L"`` (grayscale, ``N x H x W``). With
    ``image_size`` every image is resized to ``image_size x image_size``; without it all images
    must share one size. Unreadable files are skipped with a warning naming them. ``paths``
    holds each loaded image's path relative to ``root`` (``<class>/<file>``).
    """
    from PIL import Image

    check_choice("mode", mode, IMAGE_MODES)
    if image_size is not None:
        check_int("image_size", image_size, 1)
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist (expected root/<class>/<image>)")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise ValueError(f"{root} has no class folders (expected root/<class>/<image>)")
    images, labels, paths, skipped = [], [], [], []
    expected: tuple[int, int] | None = None
    for label, cdir in enumerate(class_dirs):
        files = sorted(p for p in cdir.iterdir()
                       if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS)
        for fpath in files:
            try:
                with Image.open(fpath) as im:
                    im = im.convert(mode)
            except (OSError, ValueError, SyntaxError) as exc:  # PIL's errors for corrupt/unknown files
                skipped.append(str(fpath))
                warnings.warn(f"skipping unreadable image {fpath}: {exc}", stacklevel=2)
                continue
            if image_size is not None:
                im = im.resize((image_size, image_size), resample=Image.Resampling.BILINEAR)
            elif expected is None:
                expected = im.size
            elif im.size != expected:
                raise ValueError(f"{fpath} is {im.size[0]}x{im.size[1]} but earlier images are "
                                 f"{expected[0]}x{expected[1]}; pass image_size=... to resize all images")
            images.append(np.asarray(im, dtype=np.uint8))
            labels.append(label)
            paths.append(f"{cdir.name}/{fpath.name}")
    if not images:
        raise ValueError(f"{root} has no readable images in its class folders"
                         + (f" ({len(skipped)} unreadable)" if skipped else ""))
    return ImageSet(name=root.name, images=np.stack(images), labels=np.asarray(labels, dtype=np.int64),
                    class_names=[d.name for d in class_dirs], paths=paths)


def to_png_bytes(image: np.ndarray, size: int | None = None) -> bytes:
    """Encode one uint8 image (``H x W`` or ``H x W x 3``) as PNG; ``size`` upscales it to
    ``size x size`` with nearest-neighbour resampling (crisp pixels for tiny images)."""
    from PIL import Image

    image = np.asarray(image)
    if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[-1] == 3)):
        raise ValueError(f"image must be uint8 with shape (H, W) or (H, W, 3), got {image.dtype} {image.shape}")
    im = Image.fromarray(image)  # uint8 (H, W) -> "L", (H, W, 3) -> "RGB"
    if size is not None:
        check_int("size", size, 1)
        im = im.resize((size, size), resample=Image.Resampling.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------- class splits

def class_disjoint_split(class_names: Sequence[str], n_test: int | None = None, test_fraction: float = 0.4,
                         seed: int = 0) -> dict:
    """Split classes into disjoint, non-empty train and test lists (seeded, each sorted).

    ``n_test`` test classes, or ``round(test_fraction * n)`` when ``n_test`` is None. The result
    does not depend on the order of ``class_names``.
    """
    names = sorted(str(c) for c in class_names)
    if len(set(names)) != len(names):
        raise ValueError(f"class_names has duplicates: {names}")
    if len(names) < 2:
        raise ValueError(f"class_names has {len(names)} classes; a train/test split needs at least 2")
    if n_test is None:
        n_test = _n_test(test_fraction, len(names), "classes", f" (pass n_test in [1, {len(names) - 1}])")
    check_int("n_test", n_test, 1, len(names) - 1)
    order = np.random.default_rng(seed).permutation(len(names))
    test = sorted(names[i] for i in order[:n_test])
    train = sorted(n for n in names if n not in test)
    return {"train": train, "test": test, "seed": int(seed)}


def _check_split(split: dict) -> None:
    if not isinstance(split, dict) or "train" not in split or "test" not in split:
        raise ValueError("split must be a dict with 'train' and 'test' class lists")
    if not split["train"] or not split["test"]:
        raise ValueError("split has an empty 'train' or 'test' list; both must be non-empty")
    shared = set(split["train"]) & set(split["test"])
    if shared:
        raise ValueError(f"split is not class-disjoint: {sorted(shared)} are in both 'train' and 'test'")


def write_split(path: str | Path, split: dict) -> Path:
    """Write a class split (from :func:`class_disjoint_split`) as JSON, atomically."""
    _check_split(split)
    return write_json(path, {"train": list(split["train"]), "test": list(split["test"]), "seed": split.get("seed")})


def read_split(path: str | Path) -> dict:
    """Read a class split written by :func:`write_split` (checked to be disjoint)."""
    import json

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"class split file {path} does not exist")
    split = json.loads(path.read_text(encoding="utf-8"))
    _check_split(split)
    return split


# ---------------------------------------------------------------- episodes

@dataclass(frozen=True)
class ImageEpisode(EpisodeRecord):
    """One image-clustering problem: ``indices`` into an :class:`ImageSet` and true ``labels`` (0..c-1).

    ``params`` holds ``dataset``, ``split``, ``n_clusters``, ``n_points``, ``condition`` (None
    when clustering by class, else the attribute key), ``length_range`` and ``classes`` (the class
    name or attribute value of cluster 0, 1, ...).
    """

    indices: list = field(repr=False)
    labels: list = field(repr=False)

    @classmethod
    def from_dict(cls, d: dict) -> "ImageEpisode":
        return cls(id=d["id"], seed=int(d["seed"]), params=dict(d["params"]),
                   indices=[int(i) for i in d["indices"]], labels=[int(l) for l in d["labels"]])


def image_episode_seed(root_seed: int, split: str, n_clusters: int, index: int) -> int:
    """The 64-bit seed of one image episode, from (root seed, split code, c, index) via SeedSequence."""
    check_choice("split", split, list(SPLITS))
    entropy = [int(root_seed), _IMAGE_SEED_TAG, SPLITS[split], int(n_clusters), int(index)]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])


def _group_keys(imageset: ImageSet, label_key: str | None) -> np.ndarray:
    """The value each image is clustered by, as strings: its class name or ``attributes[label_key]``."""
    if label_key is None:
        return np.asarray(imageset.class_names, dtype=object)[imageset.labels]
    attrs = imageset.attributes or {}
    if label_key not in attrs:
        raise ValueError(f"label_key={label_key!r} is not an attribute of {imageset.name!r}; "
                         f"choose one of {sorted(attrs)}")
    return np.asarray([str(v) for v in attrs[label_key]], dtype=object)


def generate_image_episode(imageset: ImageSet, classes: Sequence[str], n_clusters: int, seed: int,
                           length_range: tuple[int, int] = DEFAULT_IMAGE_LENGTH_RANGE,
                           episode_id: str | None = None, split: str = "test",
                           label_key: str | None = None) -> ImageEpisode:
    """Generate one image episode from ``seed``.

    Chooses ``n_clusters`` distinct classes from ``classes`` (or attribute values of
    ``label_key``), a length ``n`` uniform in ``length_range`` (inclusive), sizes of one image
    each plus a multinomial over Dirichlet(1) proportions, images without replacement within
    each class, a shuffled order, and labels by first appearance.
    """
    check_choice("split", split, list(SPLITS))
    check_int("n_clusters", n_clusters, 1)
    allowed = [str(c) for c in classes]
    if len(set(allowed)) != len(allowed):
        raise ValueError(f"classes has duplicates: {allowed}")
    allowed = sorted(allowed)  # the episode does not depend on the order classes are listed in
    keys = _group_keys(imageset, label_key)
    if label_key is None:
        unknown = [c for c in allowed if c not in imageset.class_names]
        if unknown:
            raise ValueError(f"classes {unknown} are not in {imageset.name!r}; choose from {list(imageset.class_names)}")
    if n_clusters > len(allowed):
        what = "classes" if label_key is None else f"values of {label_key!r}"
        raise ValueError(f"n_clusters={n_clusters} is out of range: only {len(allowed)} {what} are available "
                         f"({allowed}); it must be <= {len(allowed)}")
    lo, hi = int(length_range[0]), int(length_range[1])
    if not (1 <= lo <= hi):
        raise ValueError(f"length_range={tuple(length_range)!r} is out of range; it must be (lo, hi) with 1 <= lo <= hi")
    rng = np.random.default_rng(seed)
    chosen = [allowed[i] for i in rng.choice(len(allowed), size=n_clusters, replace=False)]
    n = int(rng.integers(lo, hi + 1))
    if n < n_clusters:
        raise ValueError(f"length_range={tuple(length_range)!r} drew n={n} < n_clusters={n_clusters}; "
                         f"raise its lower end so no cluster is empty")
    sizes = 1 + rng.multinomial(n - n_clusters, rng.dirichlet(np.ones(n_clusters)))
    indices, raw = [], []
    for k, (cls, size) in enumerate(zip(chosen, sizes)):
        pool = np.flatnonzero(keys == cls)
        if len(pool) < size:
            raise ValueError(f"class {cls!r} of {imageset.name!r} has only {len(pool)} images but the episode needs "
                             f"{int(size)}; lower length_range or drop that class")
        indices.append(rng.choice(pool, size=int(size), replace=False))
        raw.append(np.full(int(size), k))
    indices, raw = np.concatenate(indices), np.concatenate(raw)
    order = rng.permutation(n)
    indices, raw = indices[order], raw[order]
    labels = canonical_labels(raw)
    first = {}
    for r, l in zip(raw, labels):
        first.setdefault(l, chosen[int(r)])
    params = {"dataset": imageset.name, "split": split, "n_clusters": int(n_clusters), "n_points": n,
              "condition": label_key, "length_range": [lo, hi], "classes": [first[k] for k in range(n_clusters)]}
    return ImageEpisode(id=episode_id or f"img-{seed}", seed=int(seed), params=params,
                        indices=[int(i) for i in indices], labels=labels)


def make_image_episodes(imageset: ImageSet, classes: Sequence[str], n_clusters_list: Sequence[int], n_per_c: int,
                        root_seed: int, split: str, length_range: tuple[int, int] = DEFAULT_IMAGE_LENGTH_RANGE,
                        label_key: str | None = None) -> list[ImageEpisode]:
    """``n_per_c`` episodes for every c in ``n_clusters_list``; ids ``<split>-<dataset>-c<c>-<i>``
    (``<split>-<dataset>-<label_key>-c<c>-<i>`` for conditional episodes)."""
    check_choice("split", split, list(SPLITS))
    check_int("n_per_c", n_per_c, 1)
    stem = imageset.name if label_key is None else f"{imageset.name}-{label_key}"
    episodes = []
    for c in n_clusters_list:
        check_int("n_clusters", c, 1)
        for i in range(n_per_c):
            seed = image_episode_seed(root_seed, split, c, i)
            episodes.append(generate_image_episode(imageset, classes, c, seed, length_range=length_range,
                                                   episode_id=f"{split}-{stem}-c{c}-{i:04d}", split=split,
                                                   label_key=label_key))
    return episodes


def save_image_episodes(path: str | Path, episodes: Iterable[ImageEpisode]) -> Path:
    """Write image episodes as JSON Lines (atomically)."""
    return save_episodes(path, episodes)


def load_image_episodes(path: str | Path) -> list[ImageEpisode]:
    """Read image episodes written by :func:`save_image_episodes`."""
    return load_episodes(path, ImageEpisode, "generate the image episodes first (notebook 05 or 06)")


def image_cluster_counts(episodes: Iterable[ImageEpisode]) -> dict[str, int]:
    """Number of episodes per cluster count, keyed ``c<c>``."""
    counts = Counter(e.n_clusters for e in episodes)
    return {f"c{c}": counts[c] for c in sorted(counts)}


def image_manifest(path: str | Path, files: dict[str, str | Path], params: dict) -> dict:
    """Write a manifest (parameters, episode counts per c, sha256 per file); same layout as
    :func:`icc_utils.data.write_manifest`, so :func:`icc_utils.data.verify_manifest` checks it."""
    return write_manifest(path, files, params, load=load_image_episodes, counts=("clusters", image_cluster_counts))


# ---------------------------------------------------------------- text-conditioned clustering (Section 5)
#
# The paper's conditional image clustering (Table 3) uses ImageNet-with-Attributes (conditions
# color, shape, pattern, texture, object) and Stanford 40 Actions (action, mood, location). Neither
# can be downloaded here, so :func:`make_shapes_set` renders an offline stand-in whose images have
# independent attributes; :func:`load_stanford40_actions` and :func:`load_imagenet_attributes` read
# the paper's data when a user has it. All of them store one string per image and attribute in
# ``ImageSet.attributes``; the empty string means "no usable value" (see :func:`clean_attribute_value`).

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
#: Conditions of ImageNet-with-Attributes and of Stanford 40 Actions (paper, Section 5).
IMAGENET_ATTRIBUTE_CONDITIONS = ("object", "color", "pattern", "shape", "texture")
STANFORD40_CONDITIONS = ("action", "mood", "location")
#: Attribute values that mean "no single value" (compared case-insensitively, after stripping).
AMBIGUOUS_VALUES = ("ambiguous",)
#: A value containing one of these separators lists several values, so it is not a single value.
MULTI_VALUE_SEPARATORS = (";", "|", ",")
_CONDITIONAL_SEED_TAG = 2002


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
    lists), which :func:`write_split` / :func:`read_split` store.
    """
    table = _object_values(imageset, conditions, object_key)
    objects = sorted(table)
    if len(objects) < 2:
        raise ValueError(f"{imageset.name!r} has {len(objects)} objects; a split needs at least 2")
    n_test = _n_test(test_fraction, len(objects), "objects")
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


def is_missing_value(value) -> bool:
    """True for a value that cannot label a cluster: None, NaN, empty, or ``ambiguous``."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return True
    text = str(value).strip()
    return text == "" or text.lower() in AMBIGUOUS_VALUES


def conditional_seed(root_seed: int, split: str, condition: str, n_clusters: int, index: int) -> int:
    """The 64-bit seed of one conditional episode, from (root seed, split, condition, c, index)."""
    import zlib

    check_choice("split", split, list(SPLITS))
    entropy = [int(root_seed), _CONDITIONAL_SEED_TAG, SPLITS[split], zlib.crc32(str(condition).encode("utf-8")),
               int(n_clusters), int(index)]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])


def make_conditional_episodes(imageset: ImageSet, objects: Sequence[str] | None, conditions: Sequence[str],
                              n_clusters_list: Sequence[int], n_per_c: int, root_seed: int, split: str,
                              length_range: tuple[int, int] = DEFAULT_IMAGE_LENGTH_RANGE,
                              object_key: str = "object") -> list[ImageEpisode]:
    """Text-conditioned episodes: for every condition and c, ``n_per_c`` episodes clustered by that attribute.

    Only images whose ``attributes[object_key]`` is in ``objects`` (all images when ``objects`` is
    None) and whose value of the condition is usable (:func:`is_missing_value` is False) are
    drawn; the clusters are values of the condition among them. ``indices`` point into the FULL
    ``imageset``; ``params["condition"]`` names the condition (for the prompt) and
    ``params["n_objects"]`` the number of allowed objects. Seeds come from
    :func:`conditional_seed`; ids are ``<split>-<dataset>-<condition>-c<c>-<i>``.
    """
    check_choice("split", split, list(SPLITS))
    check_int("n_per_c", n_per_c, 1)
    attrs = imageset.attributes or {}
    if objects is None:
        allowed = np.ones(imageset.n_images, dtype=bool)
        n_objects = None
    else:
        if object_key not in attrs:
            raise ValueError(f"object_key={object_key!r} is not an attribute of {imageset.name!r}; "
                             f"choose from {sorted(attrs)}")
        wanted = {str(o) for o in objects}
        known = {str(v) for v in attrs[object_key]}
        unknown = sorted(wanted - known)
        if unknown:
            raise ValueError(f"objects {unknown[:5]} are not values of {object_key!r} in {imageset.name!r}")
        allowed = np.array([str(v) in wanted for v in attrs[object_key]], dtype=bool)
        n_objects = len(wanted)
    episodes = []
    for condition in conditions:
        if condition not in attrs:
            raise ValueError(f"condition {condition!r} is not an attribute of {imageset.name!r}; "
                             f"choose from {sorted(attrs)}")
        usable = allowed & ~np.array([is_missing_value(v) for v in attrs[condition]], dtype=bool)
        keep = np.flatnonzero(usable)
        if not len(keep):
            raise ValueError(f"no image of the allowed objects has a usable {condition!r} value")
        sub = imageset.subset(keep)
        values = sorted({str(v).strip() for v in sub.attributes[condition]})
        sub = ImageSet(name=sub.name, images=sub.images, labels=sub.labels, class_names=sub.class_names,
                       attributes={condition: np.array([str(v).strip() for v in sub.attributes[condition]])})
        for c in n_clusters_list:
            check_int("n_clusters", c, 1)
            for i in range(n_per_c):
                seed = conditional_seed(root_seed, split, condition, c, i)
                e = generate_image_episode(sub, values, c, seed, length_range=length_range,
                                           episode_id=f"{split}-{imageset.name}-{condition}-c{c}-{i:04d}",
                                           split=split, label_key=condition)
                params = dict(e.params, dataset=imageset.name, condition=condition, n_objects=n_objects)
                episodes.append(ImageEpisode(id=e.id, seed=e.seed, params=params,
                                             indices=[int(keep[j]) for j in e.indices], labels=list(e.labels)))
    return episodes


# ---------------------------------------------------------------- loaders for the paper's data

def clean_attribute_value(value, agreement: float | None = None, min_agreement: float = 0.0) -> str:
    """The filtering rule for annotated attributes: the stripped value if it is ONE usable value, else "".

    A value is dropped (returned as "") when it is empty/None/NaN, ``ambiguous`` (any case), lists
    several values (contains ``;``, ``|`` or ``,``), or its annotator ``agreement`` (0..1, when
    given) is below ``min_agreement``. Images with "" are skipped by
    :func:`make_conditional_episodes` for that condition only.
    """
    if is_missing_value(value):
        return ""
    text = str(value).strip()
    if any(sep in text for sep in MULTI_VALUE_SEPARATORS):
        return ""
    if agreement is not None and float(agreement) < float(min_agreement):
        return ""
    return text


def _read_csv_rows(path: Path, required: Sequence[str]) -> tuple[list[str], list[dict]]:
    import csv

    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        rows = [{(k or "").strip(): v for k, v in row.items()} for row in reader]
    missing = [c for c in required if c not in columns]
    if missing:
        raise ValueError(f"{path} lacks the column(s) {missing}; it has {columns}")
    return columns, rows


def _load_resized(path: Path, image_size: int) -> np.ndarray | None:
    """One image as uint8 RGB ``image_size x image_size`` (bilinear), or None with a warning if unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.draft("RGB", (image_size, image_size))  # fast JPEG decoding at reduced scale; no-op otherwise
            im = im.convert("RGB").resize((image_size, image_size), resample=Image.Resampling.BILINEAR)
    except (OSError, ValueError, SyntaxError) as exc:
        warnings.warn(f"skipping unreadable image {path}: {exc}", stacklevel=3)
        return None
    return np.asarray(im, dtype=np.uint8)


def _stanford40_action(file_name: str) -> str:
    stem = Path(file_name).stem
    if "_" not in stem:
        raise ValueError(f"{file_name!r} is not a Stanford 40 Actions file name (<action>_<number>.jpg)")
    return stem.rsplit("_", 1)[0]


def load_stanford40_actions(root: str | Path, image_size: int = 64, split: str | None = None,
                            annotations: str = "icc_annotations.csv") -> ImageSet:
    """Load Stanford 40 Actions (Yao et al., 2011) for conditional clustering (no download).

    Expected layout (the official release, http://vision.stanford.edu/Datasets/40actions.html):
    ``root/JPEGImages/<action>_<nnn>.jpg`` (the action is the file name without its last
    ``_<number>``, e.g. ``applauding_001.jpg`` -> ``applauding``); optionally
    ``root/ImageSplits/actions.txt`` (header line, then ``<action>\\t<count>``; gives the class
    list) and ``root/ImageSplits/<action>_train.txt`` / ``<action>_test.txt`` (one file name a line;
    they set ``attributes["split"]``, and ``split="train"|"test"`` loads only those images).

    Mood and location labels are NOT part of the original release (they were added for
    text-criterion clustering, IC|TC, Kwon et al. 2024, and reused by the paper). Put them in
    ``root/<annotations>`` (default ``icc_annotations.csv``), a CSV with columns
    ``image,action,mood,location`` (``image`` = file name in ``JPEGImages``; extra columns are kept
    too). Each value goes through :func:`clean_attribute_value` (empty/ambiguous/multi-valued -> "",
    skipped for that condition); images absent from the CSV get "". A non-empty CSV ``action``
    must match the file name's action. ``labels`` index the actions; ``attributes["action"]`` is
    always set; ``paths`` are ``JPEGImages/<file>``; images are resized to ``image_size`` square.
    """
    check_int("image_size", image_size, 1)
    if split is not None:
        check_choice("split", split, ["train", "test"])
    root = Path(root)
    jpeg_dir = root / "JPEGImages"
    if not jpeg_dir.is_dir():
        raise FileNotFoundError(f"Stanford 40 Actions images not found: expected {jpeg_dir} holding "
                                f"<action>_<nnn>.jpg files from the official release "
                                f"(http://vision.stanford.edu/Datasets/40actions.html); nothing is downloaded")
    files = sorted(p.name for p in jpeg_dir.iterdir()
                   if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise FileNotFoundError(f"{jpeg_dir} holds no images (expected <action>_<nnn>.jpg files)")
    split_dir = root / "ImageSplits"
    split_of: dict[str, str] = {}
    if split_dir.is_dir():
        for which in ("train", "test"):
            for lst in sorted(split_dir.glob(f"*_{which}.txt")):
                for line in lst.read_text(encoding="utf-8").split():
                    split_of[line.strip()] = which
    if split is not None:
        if not split_of:
            raise FileNotFoundError(f"split={split!r} needs the lists {split_dir}/<action>_{split}.txt "
                                    f"of the official release")
        files = [f for f in files if split_of.get(f) == split]
        if not files:
            raise ValueError(f"no image of {jpeg_dir} is listed in {split_dir}/*_{split}.txt")
    actions_txt = split_dir / "actions.txt"
    if actions_txt.is_file():
        lines = [ln.split()[0] for ln in actions_txt.read_text(encoding="utf-8").splitlines() if ln.strip()]
        class_names = [a for a in lines if a != "action_name"]
    else:
        class_names = sorted({_stanford40_action(f) for f in files})
    extra: dict[str, dict[str, str]] = {}
    extra_cols: list[str] = []
    csv_path = root / annotations
    if csv_path.is_file():
        columns, rows = _read_csv_rows(csv_path, ["image"])
        extra_cols = [c for c in columns if c != "image"]
        for row in rows:
            extra[Path(str(row["image"]).strip()).name] = {c: clean_attribute_value(row.get(c)) for c in extra_cols}
    images, labels, paths, kept = [], [], [], []
    for f in files:
        action = _stanford40_action(f)
        if action not in class_names:
            raise ValueError(f"{f}: action {action!r} is not in {actions_txt} ({len(class_names)} actions)")
        given = extra.get(f, {}).get("action", "")
        if given and given != action:
            raise ValueError(f"{csv_path}: image {f} has action {given!r} but its file name says {action!r}")
        arr = _load_resized(jpeg_dir / f, image_size)
        if arr is None:
            continue
        images.append(arr)
        labels.append(class_names.index(action))
        paths.append(f"JPEGImages/{f}")
        kept.append(f)
    if not images:
        raise ValueError(f"{jpeg_dir} has no readable images")
    attributes = {"action": np.array([_stanford40_action(f) for f in kept])}
    if split_of:
        attributes["split"] = np.array([split_of.get(f, "") for f in kept])
    for col in extra_cols:
        if col != "action":
            attributes[col] = np.array([extra.get(f, {}).get(col, "") for f in kept])
    return ImageSet(name="stanford40", images=np.stack(images), labels=np.asarray(labels, dtype=np.int64),
                    class_names=class_names, paths=paths, attributes=attributes)


def load_imagenet_attributes(root: str | Path, image_size: int = 64, min_agreement: float = 2 / 3,
                             conditions: Sequence[str] = IMAGENET_ATTRIBUTE_CONDITIONS) -> ImageSet:
    """Load ImageNet-with-Attributes for conditional clustering (no download; the paper's files are not public).

    Expected layout: images in ImageFolder form ``root/images/<wnid>/<file>`` and an attribute
    table ``root/attributes.csv`` with columns ``image,object,color,pattern,shape,texture``
    (``image`` = path relative to ``root/images``, ``<wnid>/<file>``, or a bare file name that is
    unique under it). Only images listed in the table are loaded (one row each).

    Filtering rule (per image and condition, :func:`clean_attribute_value`): a value is kept only
    if it is a single, non-empty value that is not ``ambiguous`` (a value listing several with
    ``;``, ``|`` or ``,`` is dropped) and, when the table has a column ``<condition>_agreement``
    (fraction of annotators agreeing, 0..1), that fraction is at least ``min_agreement`` (default
    2/3, e.g. two of three annotators). A dropped value is stored as "" and the image is skipped
    for THAT condition only by :func:`make_conditional_episodes`. The ``object`` falls back to the
    image's folder (``wnid``) when its cell is dropped, since the ImageNet class is always known;
    ``labels`` index the sorted objects. Conditions missing from the table are all "".
    """
    check_int("image_size", image_size, 1)
    if not 0.0 <= float(min_agreement) <= 1.0:
        raise ValueError(f"min_agreement={min_agreement!r} is out of range; it must be in [0, 1]")
    root = Path(root)
    image_dir, table = root / "images", root / "attributes.csv"
    if not image_dir.is_dir():
        raise FileNotFoundError(f"ImageNet-with-Attributes images not found: expected {image_dir}/<wnid>/<file> "
                                f"(ImageFolder layout); nothing is downloaded")
    if not table.is_file():
        raise FileNotFoundError(f"ImageNet-with-Attributes table not found: expected {table} with columns "
                                f"image,{','.join(IMAGENET_ATTRIBUTE_CONDITIONS)}")
    columns, rows = _read_csv_rows(table, ["image"])
    if not any(c in columns for c in conditions):
        raise ValueError(f"{table} has none of the condition columns {list(conditions)}; it has {columns}")
    by_rel: dict[str, Path] = {}
    by_name: dict[str, list[Path]] = {}
    for p in sorted(image_dir.glob("*/*")):
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS:
            by_rel[f"{p.parent.name}/{p.name}"] = p
            by_name.setdefault(p.name, []).append(p)
    images, paths = [], []
    values: dict[str, list[str]] = {c: [] for c in conditions}
    seen: set[Path] = set()
    for row in rows:
        ref = str(row.get("image") or "").strip().replace("\\", "/")
        path = by_rel.get(ref)
        if path is None and len(by_name.get(Path(ref).name, [])) == 1:
            path = by_name[Path(ref).name][0]
        if path is None:
            warnings.warn(f"{table}: image {ref!r} is not (uniquely) found under {image_dir}; skipped", stacklevel=2)
            continue
        if path in seen:
            raise ValueError(f"{table}: image {ref!r} is listed twice")
        seen.add(path)
        arr = _load_resized(path, image_size)
        if arr is None:
            continue
        images.append(arr)
        paths.append(f"images/{path.parent.name}/{path.name}")
        for c in conditions:
            agree = row.get(f"{c}_agreement")
            agree = None if agree is None or str(agree).strip() == "" else float(agree)
            v = clean_attribute_value(row.get(c), agree, min_agreement)
            if c == "object" and v == "":
                v = path.parent.name
            values[c].append(v)
    if not images:
        raise ValueError(f"no image listed in {table} could be loaded from {image_dir}")
    attributes = {c: np.array(v) for c, v in values.items()}
    if "object" in attributes:
        objects = attributes["object"]
    else:
        objects = np.array([p.split("/")[1] for p in paths])
    class_names = sorted(set(objects.tolist()))
    labels = np.array([class_names.index(o) for o in objects], dtype=np.int64)
    return ImageSet(name="imagenet-attributes", images=np.stack(images), labels=labels, class_names=class_names,
                    paths=paths, attributes=attributes)


def interleave_by_c(episodes: Sequence[ImageEpisode], by_condition: bool = False) -> list[ImageEpisode]:
    """Episodes reordered so that c alternates (c=2 #0, c=3 #0, c=4 #0, c=2 #1, ...), stable within each c.

    With ``by_condition``, the groups are (condition, c) pairs (condition-major), so a prefix
    holds every condition and every c in turn. Each episode is fixed by its seed, so any prefix
    of the result is the same whatever the total count: a training set of n episodes is the
    first n, and asking for more elsewhere does not change it.
    """
    groups_by: dict[tuple, list] = {}
    for ep in episodes:
        key = ((str((ep.params or {}).get("condition")),) if by_condition else ()) + (ep.n_clusters,)
        groups_by.setdefault(key, []).append(ep)
    groups = [groups_by[k] for k in sorted(groups_by)]
    return [g[i] for i in range(max((len(g) for g in groups), default=0)) for g in groups if i < len(g)]


def _n_test(test_fraction: float, n: int, what: str, hint: str = "") -> int:
    """How many of ``n`` classes/objects go to the test split; both splits non-empty, else a clear error."""
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction={test_fraction!r} is out of range; it must be in (0, 1)")
    n_test = int(round(float(test_fraction) * n))
    if not 1 <= n_test <= n - 1:
        raise ValueError(f"test_fraction={test_fraction!r} gives {n_test} of {n} test {what}; "
                         f"both splits must be non-empty{hint}")
    return n_test
