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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .data import SPLITS, _check_choice, _check_int, canonical_labels
from .io import read_jsonl, sha256_file, write_json, write_jsonl

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
    _check_choice("kind", kind, DOMAIN_SHIFTS)
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

    _check_choice("mode", mode, IMAGE_MODES)
    if image_size is not None:
        _check_int("image_size", image_size, 1)
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
        _check_int("size", size, 1)
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
        if not 0.0 < float(test_fraction) < 1.0:
            raise ValueError(f"test_fraction={test_fraction!r} is out of range; it must be in (0, 1)")
        n_test = int(round(float(test_fraction) * len(names)))
        if not 1 <= n_test <= len(names) - 1:
            raise ValueError(f"test_fraction={test_fraction!r} gives {n_test} of {len(names)} test classes; "
                             f"both splits must be non-empty (pass n_test in [1, {len(names) - 1}])")
    _check_int("n_test", n_test, 1, len(names) - 1)
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
class ImageEpisode:
    """One image-clustering problem: ``indices`` into an :class:`ImageSet` and true ``labels`` (0..c-1).

    ``params`` holds ``dataset``, ``split``, ``n_clusters``, ``n_points``, ``condition`` (None
    when clustering by class, else the attribute key), ``length_range`` and ``classes`` (the class
    name or attribute value of cluster 0, 1, ...).
    """

    id: str
    seed: int
    params: dict
    indices: list = field(repr=False)
    labels: list = field(repr=False)

    @property
    def n_clusters(self) -> int:
        return int(self.params["n_clusters"])

    @property
    def n_points(self) -> int:
        return len(self.labels)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ImageEpisode":
        return cls(id=d["id"], seed=int(d["seed"]), params=dict(d["params"]),
                   indices=[int(i) for i in d["indices"]], labels=[int(l) for l in d["labels"]])


def image_episode_seed(root_seed: int, split: str, n_clusters: int, index: int) -> int:
    """The 64-bit seed of one image episode, from (root seed, split code, c, index) via SeedSequence."""
    _check_choice("split", split, list(SPLITS))
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
    _check_choice("split", split, list(SPLITS))
    _check_int("n_clusters", n_clusters, 1)
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
    _check_choice("split", split, list(SPLITS))
    _check_int("n_per_c", n_per_c, 1)
    stem = imageset.name if label_key is None else f"{imageset.name}-{label_key}"
    episodes = []
    for c in n_clusters_list:
        _check_int("n_clusters", c, 1)
        for i in range(n_per_c):
            seed = image_episode_seed(root_seed, split, c, i)
            episodes.append(generate_image_episode(imageset, classes, c, seed, length_range=length_range,
                                                   episode_id=f"{split}-{stem}-c{c}-{i:04d}", split=split,
                                                   label_key=label_key))
    return episodes


def save_image_episodes(path: str | Path, episodes: Iterable[ImageEpisode]) -> Path:
    """Write image episodes as JSON Lines (atomically)."""
    return write_jsonl(path, (e.to_dict() for e in episodes))


def load_image_episodes(path: str | Path) -> list[ImageEpisode]:
    """Read image episodes written by :func:`save_image_episodes`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: generate the image episodes first")
    return [ImageEpisode.from_dict(r) for r in read_jsonl(path)]


def image_cluster_counts(episodes: Iterable[ImageEpisode]) -> dict[str, int]:
    """Number of episodes per cluster count, keyed ``c<c>``."""
    counts = Counter(e.n_clusters for e in episodes)
    return {f"c{c}": counts[c] for c in sorted(counts)}


def image_manifest(path: str | Path, files: dict[str, str | Path], params: dict) -> dict:
    """Write a manifest (parameters, episode counts per c, sha256 per file); same layout as
    :func:`icc_utils.data.write_manifest`, so :func:`icc_utils.data.verify_manifest` checks it."""
    entries = {}
    for name, fpath in sorted(files.items()):
        eps = load_image_episodes(fpath)
        entries[name] = {"file": Path(fpath).name, "n_episodes": len(eps), "sha256": sha256_file(fpath),
                         "clusters": image_cluster_counts(eps)}
    manifest = {"params": params, "files": entries}
    write_json(path, manifest)
    return manifest
