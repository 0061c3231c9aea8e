"""Seeded image-clustering episodes: generation, conditional episodes, save/load and manifests.

An :class:`ImageEpisode` is ``n`` image indices from ``c`` distinct classes (every cluster
non-empty, no image twice), shuffled, with labels canonicalised by order of first appearance,
exactly like the numeric episodes of :mod:`icc_utils.data`. Each episode comes from one
explicit integer seed derived from (root seed, split, c, index), so train and test episodes
never share a seed. Conditional episodes (:func:`make_conditional_episodes`) cluster images by
one attribute instead of their class.
"""
from __future__ import annotations

import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..data import SPLITS, EpisodeRecord, canonical_labels, load_episodes, save_episodes, write_manifest
from ..validation import check_choice, check_int
from .images import ImageSet, is_missing_value


DEFAULT_IMAGE_LENGTH_RANGE = (10, 30)
#: Mixed into every image-episode seed so it never equals a numeric-episode seed by construction.
_IMAGE_SEED_TAG = 1001
#: Mixed into every conditional-episode seed (see :func:`conditional_seed`).
_CONDITIONAL_SEED_TAG = 2002


@dataclass(frozen=True)
class ImageEpisode(EpisodeRecord):
    """One image-clustering problem: ``indices`` into an :class:`~icc_utils.vision.images.ImageSet` and true ``labels`` (0..c-1).

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


def conditional_seed(root_seed: int, split: str, condition: str, n_clusters: int, index: int) -> int:
    """The 64-bit seed of one conditional episode, from (root seed, split, condition, c, index)."""
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
