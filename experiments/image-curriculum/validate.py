"""Per-episode validation scores of image-curriculum adapters, with standard errors.

Validation only: held-out images (img_val_fraction) of the training digits 0-4, the split that
``make train-images`` holds out; never the test digits 5-9. Beside each adapter: k-means on the same
frozen tower features, one label for every image, and random labels, on the same episodes.

    OMP_NUM_THREADS=1 python experiments/image-curriculum/validate.py --base runs/icc-images-b1/base \
        --adapter models/icc-images/stages/1-c2-short-k4 --n-per-c 30 --out experiments/image-curriculum/validation.csv
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from icc_utils.io import write_csv
from icc_utils.metrics import summarize
from icc_utils.profiles import load_profile
from icc_utils.vision import baselines as B, images as I, vlm as V
from icc_utils.vision.curriculum import holdout_split, pooling_kernel
from icc_utils.vision.episodes import make_image_episodes
from icc_utils.vision.publish import adapter_kernel


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="the assembled stand-in (make train-images writes <out>/base)")
    ap.add_argument("--adapter", action="append", required=True, help="an adapter folder (repeat)")
    ap.add_argument("--n-per-c", type=int, default=30)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    p = load_profile("default")
    classes, seed = [str(c) for c in p["img_train_classes"]], p["seed"]
    images = I.load_digits_set()
    _, val_idx = holdout_split(images, classes, p["img_val_fraction"], seed)
    val = images.subset(val_idx)
    eps = make_image_episodes(val, classes, [2, 3, 4], args.n_per_c, seed, "val", tuple(p["img_length_range"]))
    model, _, processor = V.load_vlm(args.base)
    feats = B.mean_pooled_features(model, processor, val.images)
    del model
    frames = [B.score_image_rows(eps, B.kmeans_on_features(feats, eps, seed), "kmeans", B.KMEANS_METHOD, "validation"),
              B.one_label_image_rows(eps, "validation"), B.chance_image_rows(eps, "validation", seed)]
    for adapter in args.adapter:
        name = Path(adapter).name
        kernel = adapter_kernel(adapter)
        icc = V.VisionICC(args.base, kernel=kernel, adapter=adapter, name=f"icc-{name}", batch_size=8)
        assert pooling_kernel(icc.model) == kernel
        frames.append(B.score_image_rows(eps, icc.predict(eps, val), icc.name, f"ICC ({name})", "validation"))
        del icc
    rows = pd.concat(frames, ignore_index=True)
    write_csv(args.out, rows)
    table = summarize(rows, ["method", "n_clusters"], metrics=("accuracy", "ari", "well_formed"))
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()
