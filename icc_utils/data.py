"""Seeded clustering episodes (docs/protocol.md, "Data").

An episode is ``n`` points around ``c`` centres drawn uniformly in [-10, 10]^d, with
Student-t (``df``), Gaussian or lognormal noise, random non-empty cluster sizes, shuffled,
rounded to two decimals (what every method sees), and labels canonicalised by order of
first appearance. Each episode comes from one explicit integer seed; the seed itself is
derived from (root seed, split, distribution, c, d, df, index), so a data set is fully
determined by its parameters, and the same cell/index gives the same episode in every
profile (the default profile's 30 episodes are the first 30 of the paper profile's 100).
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .io import read_jsonl, sha256_file, write_json, write_jsonl
from .validation import check_choice, check_int, check_number, check_str

DISTRIBUTIONS = ("t", "gaussian", "lognormal")
SPLITS = {"test": 0, "train": 1, "val": 2}
PAPER_DFS = (1.0, 1.25, 1.5, 1.75, 2.0, 5.0, 100.0)
TRAIN_DFS = (1.0, 2.0, 5.0, 100.0)
CENTER_RANGE = (-10.0, 10.0)
DEFAULT_LENGTH_RANGE = (10, 50)


@dataclass(frozen=True)
class EpisodeRecord:
    """What every episode has (numeric or image): an id, its seed (None for hand-made data), its
    ``params`` (what the data is: ``distribution``, ``df``, ``n_clusters``, ``dim``, ...)."""

    id: str
    seed: int | None
    params: dict

    @property
    def n_clusters(self) -> int | None:
        """The number of clusters, or None when it is unknown (an unlabelled :meth:`Episode.from_points`)."""
        c = self.params.get("n_clusters")
        return None if c is None else int(c)

    @property
    def n_points(self) -> int:
        return len(self.labels)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Episode(EpisodeRecord):
    """One clustering problem: ``points`` (n x d, two decimals) and true ``labels`` (0..c-1; None
    when unknown). Generated episodes come from :func:`generate_episode`; your own data from
    :meth:`from_points`."""

    points: list = field(repr=False)
    labels: list | None = field(repr=False)

    @property
    def n_points(self) -> int:
        return len(self.points)

    @property
    def dim(self) -> int:
        return int(self.params["dim"])

    @classmethod
    def from_dict(cls, d: dict) -> "Episode":
        return cls(id=d["id"], seed=None if d.get("seed") is None else int(d["seed"]), params=dict(d["params"]),
                   points=[list(p) for p in d["points"]], labels=None if d.get("labels") is None else list(d["labels"]))

    @classmethod
    def from_points(cls, points, labels=None, n_clusters: int | None = None, episode_id: str | None = None,
                    distribution: str = "custom", df: float | None = None, decimals: int | None = 2,
                    **params) -> "Episode":
        """An episode from your own points: hand-made data, a scikit-learn data set, custom noise.

        ``points``: an (n, d) array-like of finite numbers, rounded to ``decimals`` (two: what the
        prompt shows and what every method then sees; None keeps them). ``labels``: the true
        clusters (any hashable values, renumbered by first appearance as generated episodes are),
        or None when unknown (prompts and models work; scoring needs labels). ``n_clusters``:
        defaults to the number of distinct labels; None with no labels means unknown (use
        ``known_k=False``). ``distribution``/``df`` and any further ``params`` (e.g.
        ``noise="laplace"``) are recorded in ``params`` and appear in scoring rows, so a table says
        what the data was. ``episode_id`` defaults to a digest of the points and labels.
        """
        import hashlib
        import json

        arr = np.asarray(points, dtype=float) if not isinstance(points, np.ndarray) else points.astype(float)
        if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
            raise ValueError(f"points must be a 2-D array of shape (n_points, dim) with n_points, dim >= 1; "
                             f"got shape {arr.shape}")
        if not np.isfinite(arr).all():
            raise ValueError("points must be finite numbers; found NaN or infinity at row(s) "
                             f"{sorted(set(np.argwhere(~np.isfinite(arr))[:, 0].tolist()))[:10]}")
        if decimals is not None:
            arr = np.round(arr, check_int("decimals", decimals, 0)) + 0.0
        n, d = arr.shape
        canon = None
        if labels is not None:
            labels = list(np.asarray(labels).tolist()) if not isinstance(labels, list) else labels
            if len(labels) != n:
                raise ValueError(f"labels has {len(labels)} entries but points has {n} rows; give one label per point")
            mapping: dict = {}
            canon = [mapping.setdefault(l, len(mapping)) for l in labels]
        if n_clusters is None and canon is not None:
            n_clusters = len(set(canon))
        if n_clusters is not None:
            n_clusters = check_int("n_clusters", n_clusters, 1, n)
            if canon is not None and len(set(canon)) > n_clusters:
                raise ValueError(f"n_clusters={n_clusters} but labels hold {len(set(canon))} different values")
        check_str("distribution", distribution)
        if df is not None:
            df = check_number("df", df, lo=0.0)
        if episode_id is None:
            blob = json.dumps([arr.tolist(), canon, n_clusters], separators=(",", ":")).encode()
            episode_id = f"{distribution}-{hashlib.sha256(blob).hexdigest()[:12]}"
        all_params = {**params, "distribution": distribution, "df": df, "n_clusters": n_clusters, "dim": int(d),
                      "n_points": int(n)}
        return cls(id=check_str("episode_id", episode_id), seed=None, params=all_params, points=arr.tolist(),
                   labels=canon)


def normalise_distribution(distribution: str, df: float | None) -> tuple[str, float | None]:
    """Map ``("t", inf)`` to ``("gaussian", None)`` and check the pair; returns (distribution, df)."""
    check_choice("distribution", distribution, DISTRIBUTIONS)
    if distribution == "t":
        if df is None:
            raise ValueError("df is required for distribution='t' (a number > 0, or inf for Gaussian)")
        df = float(df)
        if not df > 0:
            raise ValueError(f"df={df!r} is out of range; it must be > 0 (or inf for Gaussian)")
        if math.isinf(df):
            return "gaussian", None
        return "t", df
    return distribution, None


def canonical_labels(labels: Iterable[int]) -> list[int]:
    """Relabel clusters by order of first appearance: the first point is cluster 0, and so on."""
    mapping: dict[int, int] = {}
    return [mapping.setdefault(int(l), len(mapping)) for l in labels]


# ---------------------------------------------------------------- seeds

def _df_code(df: float | None) -> int:
    return 0 if df is None else int(round(df * 1000))


def episode_seed(root_seed: int, split: str, distribution: str, n_clusters: int, dim: int,
                 df: float | None, index: int) -> int:
    """The 64-bit seed of one episode, derived from its cell and index with numpy's SeedSequence."""
    check_choice("split", split, list(SPLITS))
    entropy = [int(root_seed), SPLITS[split], DISTRIBUTIONS.index(distribution) + 1,
               int(n_clusters), int(dim), _df_code(df), int(index)]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])


def cell_key(distribution: str, n_clusters: int, dim: int, df: float | None) -> str:
    """A readable key for one grid cell, used in episode ids."""
    df_part = "" if df is None else f"-df{df:g}"
    return f"{distribution}-c{n_clusters}-d{dim}{df_part}"


# ---------------------------------------------------------------- generation

def generate_episode(seed: int, distribution: str, n_clusters: int, dim: int, df: float | None = None,
                     n_points: int | None = None, length_range: tuple[int, int] = DEFAULT_LENGTH_RANGE,
                     episode_id: str | None = None) -> Episode:
    """Generate one episode from ``seed`` exactly as docs/protocol.md says.

    Centres uniform in [-10, 10]^d; noise: standard Student-t with ``df`` (unit scale),
    standard normal (``gaussian``), or lognormal(0, 1); every cluster non-empty (one point
    each, the rest multinomial over Dirichlet(1) proportions); points shuffled and rounded
    to two decimals; labels by first appearance.
    """
    distribution, df = normalise_distribution(distribution, df)
    check_int("n_clusters", n_clusters, 1)
    check_int("dim", dim, 1)
    lo, hi = int(length_range[0]), int(length_range[1])
    if not (1 <= lo <= hi):
        raise ValueError(f"length_range={tuple(length_range)!r} is out of range; it must be (lo, hi) with 1 <= lo <= hi")
    rng = np.random.default_rng(seed)
    n = int(rng.integers(lo, hi + 1)) if n_points is None else int(n_points)
    if n < n_clusters:
        raise ValueError(f"n_points={n} is out of range; it must be >= n_clusters={n_clusters} so no cluster is empty")
    centres = rng.uniform(*CENTER_RANGE, size=(n_clusters, dim))
    proportions = rng.dirichlet(np.ones(n_clusters))
    sizes = 1 + rng.multinomial(n - n_clusters, proportions)
    raw = np.repeat(np.arange(n_clusters), sizes)
    if distribution == "t":
        noise = rng.standard_t(df, size=(n, dim))
    elif distribution == "gaussian":
        noise = rng.standard_normal(size=(n, dim))
    else:  # lognormal
        noise = rng.lognormal(mean=0.0, sigma=1.0, size=(n, dim))
    points = centres[raw] + noise
    order = rng.permutation(n)
    points, raw = points[order], raw[order]
    points = np.round(points, 2) + 0.0  # "+ 0.0" turns -0.0 into 0.0
    params = {"distribution": distribution, "df": df, "n_clusters": int(n_clusters), "dim": int(dim),
              "n_points": n}
    return Episode(id=episode_id or f"ep-{seed}", seed=int(seed), params=params,
                   points=points.tolist(), labels=canonical_labels(raw))


def permute_episode(episode: Episode, seed: int, suffix: str | None = None) -> Episode:
    """The same episode with its points in a random order (labels re-canonicalised)."""
    order = np.random.default_rng(seed).permutation(episode.n_points)
    return Episode(id=f"{episode.id}-{suffix or f'perm{seed}'}", seed=episode.seed,
                   params={**episode.params, "permutation_seed": int(seed)},
                   points=[episode.points[i] for i in order],
                   labels=canonical_labels(episode.labels[i] for i in order))


LABEL_RULES = ("clusters", "sign", "sign-canonical")


def rule_labelled(episode: Episode, rule: str) -> Episode:
    """``episode`` with labels from a fixed ``rule`` instead of its clusters (a control for issue 4).

    ``clusters``: unchanged. ``sign``: 1 where the point's first coordinate is >= 0, else 0 (each
    label read from its own point, no context needed). ``sign-canonical``: the same split relabelled
    by first appearance, as cluster labels are (each label needs the first point's side too). The
    points and ``n_clusters`` stay; ``params["labels"]`` records the rule.
    """
    check_choice("rule", rule, LABEL_RULES)
    if rule == "clusters":
        return episode
    labels = [int(p[0] >= 0) for p in episode.points]
    if rule == "sign-canonical":
        labels = canonical_labels(labels)
    return Episode(id=f"{episode.id}-{rule}", seed=episode.seed, params={**episode.params, "labels": rule},
                   points=episode.points, labels=labels)


def nearest_mean_agreement(episode: Episode) -> float:
    """Share of points nearer (Euclidean) their own cluster's mean than any other cluster's mean.

    1.0 means the labels are the partition the points' own geometry draws (no point lies on the far side
    of another cluster's mean): an easy, well-separated episode, for an easy-first training set (issue 4).
    """
    points, labels = np.asarray(episode.points, dtype=float), np.asarray(episode.labels)
    means = np.stack([points[labels == k].mean(axis=0) for k in range(episode.n_clusters)])
    nearest = np.linalg.norm(points[:, None, :] - means[None, :, :], axis=2).argmin(axis=1)
    return float(np.mean(nearest == labels))


def make_grid(distribution: str, n_clusters: Sequence[int], dims: Sequence[int], dfs: Sequence[float | None],
              n_episodes: int, root_seed: int, split: str = "test",
              length_range: tuple[int, int] = DEFAULT_LENGTH_RANGE) -> list[Episode]:
    """``n_episodes`` episodes for every (c, d, df) cell; ``dfs`` is ignored (use ``[None]``) for non-t data."""
    check_int("n_episodes", n_episodes, 1)
    dfs = list(dfs) if distribution == "t" else [None]
    episodes = []
    for c in n_clusters:
        check_int("n_clusters", c, 2, 10)
        for d in dims:
            check_int("dim", d, 1, 16)
            for df in dfs:
                dist, dfn = normalise_distribution(distribution, df)
                key = cell_key(dist, c, d, dfn)
                for i in range(n_episodes):
                    seed = episode_seed(root_seed, split, dist, c, d, dfn, i)
                    episodes.append(generate_episode(seed, dist, c, d, dfn, length_range=length_range,
                                                     episode_id=f"{split}-{key}-{i:04d}"))
    return episodes


def make_training_set(n_episodes: int, root_seed: int, n_clusters: Sequence[int] = (2, 3, 4, 5),
                      dims: Sequence[int] = (1, 2, 3, 4), dfs: Sequence[float] = TRAIN_DFS,
                      length_range: tuple[int, int] = DEFAULT_LENGTH_RANGE, distribution: str = "t",
                      split: str = "train") -> list[Episode]:
    """The fine-tuning set: each episode draws its (c, d, df) uniformly from the ranges.

    Seeds come from the ``train`` split, so they are disjoint from every test set.
    """
    check_int("n_episodes", n_episodes, 0)
    episodes = []
    for i in range(n_episodes):
        pick = np.random.default_rng(np.random.SeedSequence([int(root_seed), SPLITS[split], 99, i]))
        c = int(pick.choice(list(n_clusters)))
        d = int(pick.choice(list(dims)))
        df = float(pick.choice(list(dfs))) if distribution == "t" else None
        dist, df = normalise_distribution(distribution, df)
        seed = episode_seed(root_seed, split, dist, c, d, df, i)
        episodes.append(generate_episode(seed, dist, c, d, df, length_range=length_range,
                                         episode_id=f"{split}-{i:06d}-{cell_key(dist, c, d, df)}"))
    return episodes


def one_setting_training_set(n_episodes: int, root_seed: int, n_clusters: int, dim: int,
                             dfs: Sequence[float] = TRAIN_DFS, length_range: tuple[int, int] = DEFAULT_LENGTH_RANGE,
                             separated: bool = False) -> list[Episode]:
    """Training episodes of one setting (c, d), t noise drawn from ``dfs``: a curriculum stage.

    With ``separated`` the first ``n_episodes`` of ten times as many whose labels are their points'
    nearest-mean partition (:func:`nearest_mean_agreement` = 1): the easy end of the curriculum. The
    episodes of a shorter stage are the first ones of a longer stage with the same setting.
    """
    make = partial(make_training_set, root_seed=root_seed, n_clusters=[n_clusters], dims=[dim], dfs=tuple(dfs),
                   length_range=tuple(length_range))
    if not separated:
        return make(n_episodes)
    pool = make(n_episodes * 10)
    kept = [ep for ep in pool if nearest_mean_agreement(ep) == 1.0][:n_episodes]
    if len(kept) < n_episodes:
        raise ValueError(f"n_episodes={n_episodes} with separated=True: only {len(kept)} of {len(pool)} training "
                         f"episodes (c={n_clusters}, d={dim}, df {list(dfs)}) are well separated; ask for fewer "
                         f"episodes or allow larger dfs")
    return kept


# ---------------------------------------------------------------- files

def save_episodes(path: str | Path, episodes: Iterable[EpisodeRecord]) -> Path:
    """Write episodes (numeric or image) as JSON Lines (atomically)."""
    return write_jsonl(path, (e.to_dict() for e in episodes))


def load_episodes(path: str | Path, record_type: type = None,
                  missing_hint: str = "run notebook 00_data for this profile first") -> list:
    """Read episodes written by :func:`save_episodes` (``record_type``: default :class:`Episode`)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: {missing_hint}")
    record_type = record_type or Episode
    return [record_type.from_dict(r) for r in read_jsonl(path)]


def select(episodes: Iterable[Episode], **criteria) -> list[Episode]:
    """Episodes whose params match every criterion; a criterion may be a value or a list of values.

    ``n_per_cell`` keeps the first n episodes of each (distribution, c, d, df) cell, after skipping the
    first ``start`` of each cell (e.g. the development episodes, which a verdict must not reuse).
    """
    n_per_cell, start = criteria.pop("n_per_cell", None), criteria.pop("start", 0)
    out, seen = [], Counter()
    for e in episodes:
        ok = True
        for k, v in criteria.items():
            allowed = v if isinstance(v, (list, tuple, set)) else [v]
            if e.params.get(k) not in allowed:
                ok = False
                break
        if not ok:
            continue
        cell = (e.params.get("distribution"), e.params.get("n_clusters"), e.params.get("dim"), e.params.get("df"))
        seen[cell] += 1
        if seen[cell] <= start or (n_per_cell is not None and seen[cell] > start + n_per_cell):
            continue
        out.append(e)
    return out


def cell_counts(episodes: Iterable[Episode]) -> dict[str, int]:
    """Number of episodes per cell key."""
    return dict(sorted(Counter(cell_key(e.params.get("distribution", "custom"), e.n_clusters, e.dim,
                                        e.params.get("df")) for e in episodes).items()))


def write_manifest(path: str | Path, files: dict[str, str | Path], params: dict, load=None,
                   counts: tuple = ("cells", None)) -> dict:
    """Write a manifest (generator parameters, episode counts per cell, sha256 per file).

    ``load`` reads a file's episodes (default :func:`load_episodes`); ``counts`` is the entry's
    name and the function counting its episodes (default ``("cells", cell_counts)``).
    """
    load = load or load_episodes
    count_name, count = counts[0], counts[1] or cell_counts
    entries = {}
    for name, fpath in sorted(files.items()):
        eps = load(fpath)
        entries[name] = {"file": Path(fpath).name, "n_episodes": len(eps), "sha256": sha256_file(fpath),
                         count_name: count(eps)}
    manifest = {"params": params, "files": entries}
    write_json(path, manifest)
    return manifest


def verify_manifest(path: str | Path) -> list[str]:
    """Compare the files beside a manifest with it; returns a list of mismatches (empty = identical)."""
    import json
    path = Path(path)
    manifest = json.loads(path.read_text())
    problems = []
    for name, entry in manifest["files"].items():
        fpath = path.parent / entry["file"]
        if not fpath.exists():
            problems.append(f"{name}: {fpath} is missing")
        elif sha256_file(fpath) != entry["sha256"]:
            problems.append(f"{name}: sha256 differs from the manifest")
    return problems


def validation_episodes(seed: int, n_clusters: int, dim: int, dfs: Sequence[float], n_per_df: int) -> list[Episode]:
    """Held-out t episodes from the ``val`` seed split (never training, never test): for choosing a layer
    (notebook 03) or a learning curve (notebook 04). Ids ``val-<cell>-<index>``."""
    return [generate_episode(episode_seed(seed, "val", "t", n_clusters, dim, float(df), i), "t", n_clusters, dim,
                             float(df), episode_id=f"val-{cell_key('t', n_clusters, dim, float(df))}-{i:04d}")
            for df in dfs for i in range(n_per_df)]


def check_disjoint(train: Sequence[Episode], others: Sequence[Episode]) -> None:
    """Raise if a training episode's seed is also the seed of an evaluation episode."""
    shared = {e.seed for e in train} & {e.seed for e in others}
    if shared:
        raise ValueError(f"{len(shared)} training episodes share their seed with evaluation episodes "
                         f"(e.g. {sorted(shared)[:3]}): the training split must be disjoint from every test set")
