"""How far apart are the image tokens the language model reads? Shapes (the conditional tower and the published
adapters' projectors) against digits (notebook 05's published model).

For up to 200 validation images (held out of the training objects; for the digits, any images): mean cosine similarity
of the projected image tokens (one per image, kernel 4) and of the mean-pooled tower features, between images with
the same value (object, colour; digit) and with different values, and the tokens' norm beside the text embeddings'.
Usage: python experiments/conditional-curriculum/embedding_check.py
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from icc_utils.profiles import load_profile
from icc_utils.vision import conditional as C, curriculum as IC, images as I, vlm as V
from icc_utils.vision.publish import adapter_kernel
from icc_utils.vision.tower import pixel_values


def similarities(model_dir: str, adapter: str, images: np.ndarray, labels: np.ndarray, tag: str) -> None:
    base = V.build_embedded_llava(Path(model_dir) / "tower", Path(tempfile.mkdtemp()) / "base", seed=0)
    kernel = adapter_kernel(adapter)
    model, _, proc = V.load_vlm(str(base), adapter, kernel)
    core = V.llava_core(model)
    with torch.no_grad():
        feats = core.vision_tower(pixel_values=pixel_values(proc, images)).last_hidden_state
        tokens = core.multi_modal_projector(feats).reshape(len(images), -1).numpy()
        text_norm = model.get_input_embeddings().weight.norm(dim=1).mean().item()
    same, off = labels[:, None] == labels[None, :], ~np.eye(len(images), dtype=bool)

    def cos(x):
        u = x / np.linalg.norm(x, axis=1, keepdims=True)
        s = u @ u.T
        return s[same & off].mean(), s[~same].mean()

    (ts, td), (fs, fd) = cos(tokens), cos(feats.mean(1).numpy())
    print(f"{tag:28s} token norm {np.linalg.norm(tokens, axis=1).mean():.2f} (text {text_norm:.2f}); token cos "
          f"same {ts:.3f} different {td:.3f}; feature cos same {fs:.3f} different {fd:.3f}")


def main() -> None:
    p = load_profile("default")
    shapes = C.load_conditional_set("shapes", "", p["cond_image_size"], p["cond_n_images"], p["seed"])
    classes = C.object_split(shapes, "shapes", p["cond_test_fraction"], p["seed"])["train"]
    val = shapes.subset(IC.holdout_split(shapes, classes, p["cond_val_fraction"], p["seed"])[1])
    idx = np.random.default_rng(0).choice(val.n_images, min(200, val.n_images), replace=False)
    for key in ("object", "color"):
        labels = val.labels[idx] if key == "object" else np.unique(val.attributes[key][idx], return_inverse=True)[1]
        for name in ("icc-unconditional/stages/2-c2-k4", "icc-conditional/stages/2-c2-k4"):
            similarities(f"models/{name.split('/')[0]}", f"models/{name}", val.images[idx], np.asarray(labels),
                         f"shapes by {key}, {name.split('/')[0]}")
    digits = I.load_digits_set()
    di = np.random.default_rng(0).choice(digits.n_images, 200, replace=False)
    similarities("models/icc-images", "models/icc-images", digits.images[di], digits.labels[di], "digits, icc-images")


if __name__ == "__main__":
    main()
