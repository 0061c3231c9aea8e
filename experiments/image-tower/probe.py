"""Which tower objective gives features that separate digit classes the tower never saw? (validation only)

For each fold, the tower trains on three of the training digits (80% of their images) and k-means clusters c=2
episodes of the other two training digits (validation classes) and of the held-out 20% of the three. Features:
the tower's patch features averaged over the grid ("mean": what k-means and a one-token-per-image model see) and
all 16 patches side by side ("flat": what the sixteen-token model sees); raw pixels as the reference. Never looks
at digits 5-9 (the test classes).

    OMP_NUM_THREADS=1 .venv/bin/python experiments/image-tower/probe.py classify:30 reconstruct:30 ...

A variant is ``objective:epochs[:field=value...]`` (fields of icc_utils.vision.tower.TowerConfig). One JSON line per
(variant, fold) on stdout.
"""
import json
import sys
import tempfile
import time

import numpy as np
import torch

from icc_utils.metrics import clustering_accuracy
from icc_utils.vision import episodes as E, images as I, tower as T
from icc_utils.vision.baselines import kmeans_on_features

torch.set_num_threads(1)
digits = I.load_digits_set()
names = np.asarray(digits.class_names)[digits.labels]
FOLDS = [(["0", "1", "2"], ["3", "4"]), (["2", "3", "4"], ["0", "1"]), (["0", "2", "4"], ["1", "3"])]


def split(fit_classes):
    rng = np.random.default_rng(0)
    idx = rng.permutation(np.flatnonzero(np.isin(names, fit_classes)))
    cut = int(0.8 * len(idx))
    return sorted(idx[:cut]), sorted(idx[cut:])


def features(tower, imgs):
    with torch.no_grad():
        h = tower(pixel_values=T.pixel_values(T.image_processor_for(8), imgs)).last_hidden_state.numpy()
    return {"mean": h.mean(1), "flat": h.reshape(len(h), -1)}


def kmeans_acc(f, eps):
    return round(float(np.mean([clustering_accuracy(e.labels, p) for e, p in zip(eps, kmeans_on_features(f, eps))])), 3)


def fold_data(fit_classes, val_classes):
    tower_idx, held_idx = split(fit_classes)
    val_set = digits.subset(np.flatnonzero(np.isin(names, val_classes)))
    held_set = digits.subset(held_idx)
    return (tower_idx, val_set, E.make_image_episodes(val_set, val_classes, [2], 40, 0, "val", (10, 30)),
            held_set, E.make_image_episodes(held_set, fit_classes, [2], 40, 0, "val", (10, 30)))


def row(name, fold, feats_val, feats_held, val_eps, held_eps, secs):
    return {"variant": name, "fold": fold, "seconds": round(secs, 1),
            **{f"val_{k}": kmeans_acc(v, val_eps) for k, v in feats_val.items()},
            **{f"heldout_{k}": kmeans_acc(v, held_eps) for k, v in feats_held.items()}}


for fold, (fit_classes, val_classes) in enumerate(FOLDS):
    tower_idx, val_set, val_eps, held_set, held_eps = fold_data(fit_classes, val_classes)
    flat = lambda s: {"flat": s.images.reshape(len(s.images), -1).astype(float)}   # noqa: E731
    print(json.dumps(row("raw pixels", fold, flat(val_set), flat(held_set), val_eps, held_eps, 0)), flush=True)
    for variant in sys.argv[1:]:
        objective, epochs, *extra = variant.split(":")
        fields = dict(kv.split("=") for kv in extra)
        cfg = T.TowerConfig(epochs=int(epochs), seed=0, objective=objective,
                            **{k: type(getattr(T.TowerConfig, k))(v) for k, v in fields.items()})
        t0, d = time.perf_counter(), tempfile.mkdtemp()
        T.pretrain_tower(digits.subset(tower_idx), fit_classes, d, cfg)
        from transformers import SiglipVisionModel
        tower = SiglipVisionModel.from_pretrained(d).eval()
        print(json.dumps(row(variant, fold, features(tower, val_set.images), features(tower, held_set.images),
                             val_eps, held_eps, time.perf_counter() - t0)), flush=True)
