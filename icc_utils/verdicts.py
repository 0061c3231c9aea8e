"""The study's one verdict system (docs/protocol.md, "Verdicts").

A claim of the paper becomes one or more *comparisons*: a difference taken in the direction the paper
claims, paired over the same episodes where both sides share them, with its standard error (std with
ddof=1 / sqrt(n)). :func:`decide` turns them into one of four outcomes:

* **reproduced**: every comparison is at least ``z`` standard errors in the paper's direction;
* **contradicted**: some comparison is at least ``z`` standard errors the other way;
* **inconclusive**: otherwise;
* **not testable at this profile**: rows are missing, a comparison has fewer than :data:`MIN_N` episodes,
  or a *guard* fails: the claim presupposes that a model clusters (its ARI above 0 by ``z`` standard
  errors, :func:`clusters`) and it does not.

A claim of *no* effect (C1: small models cluster near chance) is an equivalence test: two one-sided
comparisons (:func:`near_zero`) that the mean ARI lies within ``±ARI_MARGIN`` of 0.
"""
from __future__ import annotations

import math
from typing import Sequence

import pandas as pd

from .metrics import sem

REPRODUCED, CONTRADICTED = "reproduced", "contradicted"
INCONCLUSIVE, NOT_TESTABLE = "inconclusive", "not testable at this profile"
VERDICTS = (REPRODUCED, CONTRADICTED, INCONCLUSIVE, NOT_TESTABLE)
#: Fewest episodes a comparison needs before it can decide anything.
MIN_N = 30
#: Equivalence margin on ARI for "near chance" (C1).
ARI_MARGIN = 0.05


def z_stat(mean: float, se: float) -> float:
    """``mean / se``; +-inf for a non-zero mean with zero error, 0 for 0/0, NaN if either is NaN."""
    if math.isnan(mean) or math.isnan(se):
        return math.nan
    if se == 0:
        return 0.0 if mean == 0 else math.copysign(math.inf, mean)
    return mean / se


def part(label: str, mean: float, se: float, n: int, a: float = math.nan, b: float = math.nan,
         names: tuple[str, str] | None = None) -> dict:
    """One comparison: difference ``mean`` (the paper's direction positive), its ``se`` and ``n``;
    ``a``/``b`` the two sides' means, ``names`` their names."""
    return {"label": label, "mean": float(mean), "se": float(se), "n": int(n), "a": float(a), "b": float(b),
            "stat": z_stat(float(mean), float(se)), "names": names}


def _per_episode(s: pd.Series) -> pd.Series:
    return s.groupby(level=0).mean()


def compare(label: str, a: pd.Series, b: pd.Series, names: tuple[str, str] | None = None) -> dict:
    """Paired comparison ``a - b`` of two Series indexed by episode id (only shared episodes count)."""
    a, b = _per_episode(a), _per_episode(b)
    shared = a.index.intersection(b.index)
    gaps = (a[shared] - b[shared]).dropna()
    if gaps.empty:
        return part(label, math.nan, math.nan, 0, names=names)
    return part(label, gaps.mean(), sem(gaps), len(gaps), a[shared].mean(), b[shared].mean(), names)


def clusters(label: str, ari: pd.Series) -> dict:
    """Guard: ``label`` clusters when its mean ARI (one value per episode) is above 0 by ``z`` standard errors."""
    ari = _per_episode(ari).dropna()
    return part(f"{label} clusters (ARI > 0)", ari.mean() if len(ari) else math.nan, sem(ari), len(ari))


def near_zero(label: str, ari: pd.Series, margin: float = ARI_MARGIN) -> list[dict]:
    """Two one-sided comparisons that the mean ARI lies in ``(-margin, margin)``: ``ARI + margin`` and
    ``margin - ARI``, both positive when it does. The second at ``<= -z`` means the ARI is above the margin."""
    ari = _per_episode(ari).dropna()
    mean, se, n = (ari.mean(), sem(ari), len(ari)) if len(ari) else (math.nan, math.nan, 0)
    return [part(f"{label}: ARI > -{margin:g}", mean + margin, se, n, a=mean),
            part(f"{label}: ARI < {margin:g}", margin - mean, se, n, a=mean)]


def _z(p: dict) -> str:
    return f"{p['label']} z={p['stat']:.1f}"


def decide(parts: Sequence[dict], z: float = 2.0, guards: Sequence[dict] = (), min_n: int = MIN_N) -> tuple[str, str]:
    """(verdict, one-line reason) from a claim's comparisons ``parts`` and its ``guards`` (module docstring)."""
    parts, guards = list(parts), list(guards)
    if not parts:
        return NOT_TESTABLE, "nothing to compare"
    few = [p for p in parts + guards if p["n"] < min_n]
    if few:
        return NOT_TESTABLE, (f"fewer than {min_n} episodes: " +
                              "; ".join(f"{p['label']} n={p['n']}" for p in few))
    undefined = [p for p in parts + guards if math.isnan(p["stat"])]
    if undefined:
        return NOT_TESTABLE, "no standard error for " + ", ".join(p["label"] for p in undefined)
    failed = [g for g in guards if g["stat"] < z]
    if failed:
        return NOT_TESTABLE, ("the claim presupposes a model that clusters: " + "; ".join(
            f"{g['label']}: ARI {g['mean']:.3f} ± {g['se']:.3f}, z={g['stat']:.1f} < {z:g}" for g in failed))
    against = [p for p in parts if p["stat"] <= -z]
    if against:
        return CONTRADICTED, f"at least {z:g} standard errors against the paper: " + "; ".join(map(_z, against))
    if all(p["stat"] >= z for p in parts):
        return REPRODUCED, f"every comparison at least {z:g} standard errors in the paper's direction: " + \
            "; ".join(map(_z, parts))
    return INCONCLUSIVE, f"not {z:g} standard errors either way: " + "; ".join(map(_z, parts))


def best(parts: Sequence[dict]) -> dict:
    """The comparison with the largest z (NaN counts lowest)."""
    return max(parts, key=lambda p: -math.inf if math.isnan(p["stat"]) else p["stat"])


def part_text(p: dict, names: tuple[str, str] | None = None) -> str:
    """``label: A 0.80 vs B 0.60, +0.20 ± 0.05 (n=30, z=4.0)``."""
    if p["n"] == 0:
        return f"{p['label']}: not run"
    se = "–" if math.isnan(p["se"]) else f"{p['se']:.3f}"
    names = names or p.get("names")
    sides = ""
    if not math.isnan(p["a"]) and not math.isnan(p["b"]):
        sides = (f"{names[0]} {p['a']:.3f} vs {names[1]} {p['b']:.3f}, " if names
                 else f"{p['a']:.3f} vs {p['b']:.3f}, ")
    return f"{p['label']}: {sides}{p['mean']:+.3f} ± {se} (n={p['n']}, z={p['stat']:.1f})"


def guard_text(g: dict) -> str:
    """``X clusters (ARI > 0): 0.41 ± 0.03 (n=60, z=13.1)``."""
    if g["n"] == 0:
        return f"{g['label']}: not run"
    return f"{g['label']}: {g['mean']:.3f} ± {g['se']:.3f} (n={g['n']}, z={g['stat']:.1f})"


def margin_table(rows: pd.DataFrame, a, b, by: str, names: tuple[str, str] = ("a", "b"),
                 metric: str = "accuracy") -> pd.DataFrame:
    """Paired margins ``a - b`` of ``metric`` per value of ``by`` (``a``, ``b``: boolean masks over ``rows``, one
    row per episode each), with both sides' means, the standard error, z and n: what a verdict reads."""
    out = []
    for key, g in rows.groupby(by, sort=True):
        p = compare(f"{by}={key}", g[a.loc[g.index]].set_index("episode_id")[metric],
                    g[b.loc[g.index]].set_index("episode_id")[metric])
        out.append({by: key, names[0]: p["a"], names[1]: p["b"], "margin": p["mean"], "se": p["se"],
                    "z": p["stat"], "n": p["n"]})
    return pd.DataFrame(out)
