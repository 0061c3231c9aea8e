"""Classical baselines (icc_utils.baselines) and their backend wrapper."""
from __future__ import annotations

import numpy as np
import pytest

from icc_utils.baselines import CLASSICAL_METHODS, cluster_points
from icc_utils.data import generate_episode
from icc_utils.metrics import clustering_accuracy
from icc_utils.models import ClassicalModel, get_backend


def _blobs(seed=0, n_per=12, centres=((0, 0), (40, 0), (0, 40), (40, 40))):
    rng = np.random.default_rng(seed)
    pts = np.concatenate([np.asarray(c) + rng.normal(scale=0.5, size=(n_per, 2)) for c in centres])
    labels = np.repeat(np.arange(len(centres)), n_per)
    order = rng.permutation(len(pts))
    return np.round(pts[order], 2), labels[order]


@pytest.mark.parametrize("method", CLASSICAL_METHODS)
def test_well_separated_blobs_are_solved(method):
    for seed in range(3):
        pts, labels = _blobs(seed)
        pred = cluster_points(method, pts.tolist(), 4)
        assert len(pred) == len(labels) and all(isinstance(l, int) for l in pred)
        assert clustering_accuracy(labels, pred) == 1.0


@pytest.mark.parametrize("method", CLASSICAL_METHODS)
def test_deterministic(method):
    pts, _ = _blobs(1, centres=((0, 0), (3, 0), (0, 3)))
    assert cluster_points(method, pts, 3) == cluster_points(method, pts, 3)


def test_bad_method_and_points():
    with pytest.raises(ValueError, match=r"method='dbscan'.*kmeans"):
        cluster_points("dbscan", [[0.0], [1.0]], 2)
    with pytest.raises(ValueError, match="n_clusters=3"):
        cluster_points("kmeans", [[0.0], [1.0]], 3)
    with pytest.raises(ValueError, match="method"):
        ClassicalModel("dbscan")


def test_classical_backend_on_episodes():
    eps = [generate_episode(s, "gaussian", 2, 2, n_points=20) for s in range(3)]
    model = get_backend("kmeans")
    assert model.kind == "classical" and model.available
    preds = model.predict(eps)
    assert [p.episode_id for p in preds] == [e.id for e in eps]
    assert all(len(p.labels) == e.n_points for p, e in zip(preds, eps))
