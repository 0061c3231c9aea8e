"""Image sets: :class:`ImageSet`, its sources, domain shifts and class-disjoint splits.

An :class:`ImageSet` holds uint8 images (``N x H x W`` grayscale or ``N x H x W x 3`` RGB),
one class index per image, and optional per-image attributes (for conditional clustering; the
empty string means "no usable value", see :func:`is_missing_value`). Sources: scikit-learn's
bundled 8x8 digits (:func:`load_digits_set`, no download) and any ImageFolder-style tree
(:func:`load_image_folder`); the procedural shapes are in :mod:`icc_utils.vision.shapes`, the
paper's real data sets in :mod:`icc_utils.vision.datasets`. Out-of-domain test sets come from
:func:`domain_shift`; train/test class splits are disjoint (:func:`class_disjoint_split`).
"""
from __future__ import annotations

import hashlib
import io
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..io import write_json
from ..validation import check_choice, check_int

#: Class-disjoint split of the digits: four test classes cannot hold c=5 test episodes (c=5 is
#: never seen in training), so we train on 0-4 and test on 5-9.
DIGITS_TRAIN_CLASSES = ("0", "1", "2", "3", "4")
DIGITS_TEST_CLASSES = ("5", "6", "7", "8", "9")
DOMAIN_SHIFTS = ("invert", "rotate", "noise")
NOISE_SIGMA = 40.0
IMAGE_MODES = ("RGB", "L")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
#: Attribute values that mean "no single value" (compared case-insensitively, after stripping).
AMBIGUOUS_VALUES = ("ambiguous",)


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


def to_rgb(images: np.ndarray) -> np.ndarray:
    """uint8 ``(N,H,W)`` grayscale or ``(N,H,W,3)`` RGB as ``(N,H,W,3)``."""
    images = np.asarray(images)
    if images.ndim == 3:
        return np.repeat(images[..., None], 3, axis=-1)
    if images.ndim == 4 and images.shape[-1] == 3:
        return images
    raise ValueError(f"images have shape {images.shape}; expected (N,H,W) grayscale or (N,H,W,3) RGB")


def images_hash(images: np.ndarray) -> str:
    """sha256 of image arrays (shape and bytes): part of a reply's cache key."""
    arr = np.ascontiguousarray(images)
    return hashlib.sha256(json.dumps(list(arr.shape)).encode() + arr.tobytes()).hexdigest()


def is_missing_value(value: Any) -> bool:
    """True for a value that cannot label a cluster: None, NaN, empty, or ``ambiguous``."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return True
    text = str(value).strip()
    return text == "" or text.lower() in AMBIGUOUS_VALUES


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
        n_test = test_count(test_fraction, len(names), "classes", f" (pass n_test in [1, {len(names) - 1}])")
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
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"class split file {path} does not exist")
    split = json.loads(path.read_text(encoding="utf-8"))
    _check_split(split)
    return split


def test_count(test_fraction: float, n: int, what: str, hint: str = "") -> int:
    """How many of ``n`` classes/objects go to the test split; both splits non-empty, else a clear error."""
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction={test_fraction!r} is out of range; it must be in (0, 1)")
    n_test = int(round(float(test_fraction) * n))
    if not 1 <= n_test <= n - 1:
        raise ValueError(f"test_fraction={test_fraction!r} gives {n_test} of {n} test {what}; "
                         f"both splits must be non-empty{hint}")
    return n_test
