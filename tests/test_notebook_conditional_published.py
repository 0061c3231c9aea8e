"""Papermill smoke run of notebook 06 with ``cond_model`` set: the published conditional curriculum and its
unconditional baseline are evaluated, with their own tower, and nothing is fine-tuned in the notebook (what
``make reproduce`` does by default)."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from icc_utils import RESULTS_DIR
from icc_utils.publish import MODELS_DIR
from icc_utils.runner import run_notebooks

PROFILE = "smoke"
RES = RESULTS_DIR / PROFILE / "06"
COND, UNCOND = "icc-conditional/stages/1-c2-short-color-k4", "icc-unconditional/stages/1-c2-short-k4"
pytestmark = pytest.mark.skipif(not ((MODELS_DIR / COND).is_dir() and (MODELS_DIR / UNCOND).is_dir()),
                                reason="no published conditional stages")


@pytest.fixture(scope="module")
def published_run():
    # the captioner's alignment and captions are the smoke run's of test_notebook_conditional.py: left out here
    return run_notebooks(PROFILE, only=["06"], overrides={"cond_model": COND, "cond_uncond_model": UNCOND,
                                                          "cond_captioner": "probes", "cond_align_epochs": 0},
                         progress_bar=False)


def test_table3_scores_the_published_models_and_fine_tunes_nothing(published_run):
    rows = pd.read_csv(RES / "table3_episodes.csv")
    icc = {m for m in rows["method"] if m.startswith("ICC (")}
    assert icc == {"ICC (Curriculum)", "ICC (unconditional curriculum)"}, icc
    assert rows.groupby(["method", "episode_id"]).size().eq(1).all()
    nb = json.loads((RES.parent / "06_conditional_image_clustering.ipynb").read_text())
    printed = "".join(t for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])
                      for t in o.get("text", []))
    assert f"published conditional model models/{COND}: pooling kernel 4" in printed
    assert "tower: " not in printed and " min, final loss " not in printed   # no tower and no fine-tune trained here
    spec = pd.read_csv(RES / "condition_specificity.csv")
    assert {"ICC (Curriculum)", "ICC (unconditional curriculum)", "k-means (frozen features)"} == set(spec["method"])
    assert set(pd.read_csv(RES / "figure5_paired.csv")["method"]) == {"ICC (Curriculum)", "k-means (frozen features)"}
    for name in ("curve_conditional.png", "curve_unconditional.png", "loss_curves.png", "figure5_color.png"):
        assert (RES / name).stat().st_size > 1000, name


def test_models_on_different_towers_are_refused():
    from icc_utils.vision.publish import same_tower

    assert same_tower(COND, UNCOND)[1] == 4
    with pytest.raises(ValueError, match="cond_uncond_model='icc-images' was trained on another tower"):
        same_tower(COND, "icc-images")
