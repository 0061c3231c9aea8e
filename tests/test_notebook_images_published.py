"""Papermill smoke run of notebook 05 with ``img_model`` set: the published image curriculum is evaluated, with its
own tower, and nothing is trained in the notebook (what ``make reproduce`` does once the final model is published)."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from icc_utils import RESULTS_DIR
from icc_utils.publish import MODELS_DIR
from icc_utils.runner import run_notebooks

PROFILE = "smoke"
RES = RESULTS_DIR / PROFILE / "05"
STAGE, MEDIUM = "icc-images/stages/1-c2-short-k4", "icc-images-medium"
pytestmark = pytest.mark.skipif(not ((MODELS_DIR / STAGE).is_dir() and (MODELS_DIR / MEDIUM).is_dir()),
                                reason="no published image stage")


@pytest.fixture(scope="module")
def published_run():
    return run_notebooks(PROFILE, only=["05"], overrides={"img_model": STAGE, "img_size_models": [MEDIUM]}, progress_bar=False)


def test_table2_scores_the_published_model_and_trains_nothing(published_run):
    rows = pd.read_csv(RES / "table2_episodes.csv")
    icc = {m for m in rows["method"] if m.startswith("ICC (")}
    assert icc == {"ICC (Small)", "ICC (Medium)"}, icc        # named by their pooling kernels: 4 and 2
    assert rows.groupby(["method", "test_set", "episode_id"]).size().eq(1).all()
    nb = json.loads((RES.parent / "05_image_clustering.ipynb").read_text())
    printed = "".join(t for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])
                      for t in o.get("text", []))
    assert f"published image model models/{STAGE}: pooling kernel 4" in printed
    table2 = pd.read_csv(RES / "table2_image_clustering.csv").set_index("method")
    assert table2.loc["ICC (Small)"].filter(like="(paper)").notna().any()   # the paper's Small row beside ours
    assert "tokens/image): " not in printed and "tower: " not in printed   # no fine-tune and no tower trained here
    assert (RES / "loss_curves.png").stat().st_size > 1000 and (RES / "figure12_episode0.png").is_file()


def test_an_unknown_published_model_is_a_clear_error():
    from icc_utils.vision.publish import resolve_image_model

    with pytest.raises(FileNotFoundError, match=r"img_model='icc-images/stages/9-none'.*published: .*'icc-images/stages/1-c2-short-k4'"):
        resolve_image_model("icc-images/stages/9-none")
    with pytest.raises(ValueError, match="img_model='/abs' is not allowed"):
        resolve_image_model("/abs")
