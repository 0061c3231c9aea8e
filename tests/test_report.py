"""The claims table (icc_utils.report) on hand-made CSVs, and a papermill run of notebook 07 on the smoke results."""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from icc_utils import DATA_DIR, RESULTS_DIR
from icc_utils import report as R
from icc_utils.runner import run_notebooks

PROFILE = "smoke"
EPS = [f"e{i}" for i in range(10)]
WOBBLE = [0.05 * (-1) ** i for i in range(10)]  # a small spread, so standard errors are finite and non-zero


def write(root: Path, rel: str, rows: list[dict]) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)


def rows_for(model: str, method: str, accs, **extra) -> list[dict]:
    return [{"model": model, "method": method, "episode_id": e, "accuracy": a, **extra} for e, a in zip(EPS, accs)]


# ---------------------------------------------------------------- statistics

def test_z_stat_and_decide():
    assert R.z_stat(0.2, 0.1) == pytest.approx(2.0)
    assert R.z_stat(0.3, 0.0) == math.inf and R.z_stat(-0.3, 0.0) == -math.inf and R.z_stat(0.0, 0.0) == 0.0
    assert math.isnan(R.z_stat(0.3, math.nan))
    ok, bad, nan = R.part("a", 0.3, 0.1, 10), R.part("b", 0.1, 0.1, 10), R.part("c", 0.3, math.nan, 1)
    assert R.decide([ok], 2.0)[0] == R.REPRODUCED
    assert R.decide([ok], 4.0)[0] == R.NOT_REPRODUCED
    assert R.decide([ok, bad], 2.0)[0] == R.NOT_REPRODUCED
    assert R.decide([ok, nan], 2.0)[0] == R.NOT_TESTED   # untested part, nothing failed
    assert R.decide([bad, nan], 2.0)[0] == R.NOT_REPRODUCED
    assert R.decide([], 2.0)[0] == R.NOT_TESTED


def test_compare_pairs_by_episode():
    a = pd.Series([0.9, 0.8, 0.7], index=["x", "y", "z"])
    b = pd.Series([0.5, 0.5, 0.1], index=["y", "z", "w"])   # only y and z are shared
    p = R.compare("a − b", a, b)
    assert p["n"] == 2 and p["mean"] == pytest.approx(0.25) and p["a"] == pytest.approx(0.75)


def test_model_size_from_name():
    assert R.model_size_b("SmolLM2-135M-Instruct") == pytest.approx(0.135)
    assert R.model_size_b("Llama-3.2-1B-Instruct") == 1.0 and R.model_size_b("Llama-3.1-8B-Instruct") == 8.0
    assert math.isnan(R.model_size_b("gpt-4o"))


# ---------------------------------------------------------------- C1: near chance

def c1_results(root: Path, small_accs) -> None:
    common = {"df": 1, "n_clusters": 3, "dim": 3, "well_formed": True}
    write(root, "01/fig2_episodes.csv",
          rows_for("chance", "random labels", [0.4 + w / 2 for w in WOBBLE], **common)
          + rows_for("SmolLM2-135M-Instruct", "zero-shot", small_accs, **common)
          + rows_for("Llama-3.1-8B-Instruct", "zero-shot", [0.95] * 10, **common)   # not small: ignored
          + rows_for("kmeans", "kmeans", [0.9] * 10, **common))


def test_c1_reproduced_when_the_small_model_is_at_chance(tmp_path):
    c1_results(tmp_path, [0.4 + w for w in WOBBLE])
    row = R.claim_c1(tmp_path)
    assert row["verdict"] == R.REPRODUCED, row
    assert "SmolLM2" in row["ours"] and "Llama-3.1-8B" not in row["ours"]


def test_c1_not_reproduced_when_the_small_model_beats_chance(tmp_path):
    c1_results(tmp_path, [0.9 + w for w in WOBBLE])
    assert R.claim_c1(tmp_path)["verdict"] == R.NOT_REPRODUCED


def test_c1_missing_file_is_not_tested(tmp_path):
    row = R.claim_c1(tmp_path)
    assert row["verdict"] == R.NOT_TESTED and "01/fig2_episodes.csv" in row["reason"] and row["paper"]


# ---------------------------------------------------------------- C3: SC(l*) vs Gen

def c3_results(root: Path, sc_at_chosen) -> None:
    cell = {"n_clusters": 2, "dim": 1, "df": 1}
    sc = [{"episode_id": e, "layer": 5, "accuracy": a, **cell} for e, a in zip(EPS, sc_at_chosen)]
    sc += [{"episode_id": e, "layer": 9, "accuracy": 0.1, **cell} for e in EPS]      # a layer that was not chosen
    write(root, "03/sc_layers_episodes.csv", sc)
    write(root, "03/sc_val_layers.csv", [{"layer": 5, "val_accuracy": 0.7, "chosen": True},
                                         {"layer": 9, "val_accuracy": 0.6, "chosen": False}])
    write(root, "03/gen_kmeans_episodes.csv", rows_for("SmolLM2-135M-Instruct", "zero-shot", [0.5 + w for w in WOBBLE])
          + rows_for("kmeans", "kmeans", [1.0] * 10))


def test_c3_reproduced_when_sc_at_the_chosen_layer_beats_generation(tmp_path):
    c3_results(tmp_path, [0.8 + w for w in WOBBLE[::-1]])
    row = R.claim_c3(tmp_path)
    assert row["verdict"] == R.REPRODUCED, row
    assert "l*=5" in row["setting"]


def test_c3_not_reproduced_when_sc_equals_generation(tmp_path):
    c3_results(tmp_path, [0.5 + w for w in WOBBLE])
    assert R.claim_c3(tmp_path)["verdict"] == R.NOT_REPRODUCED


def test_c3_missing_file_is_not_tested(tmp_path):
    c3_results(tmp_path, [0.8] * 10)
    (tmp_path / "03" / "gen_kmeans_episodes.csv").unlink()
    assert R.claim_c3(tmp_path)["verdict"] == R.NOT_TESTED


# ---------------------------------------------------------------- C5: permutation augmentation

def c5_results(root: Path, ft_spread: float, aug_spread: float, with_aug: bool = True) -> None:
    rows = []
    methods = [("finetuned", ft_spread)] + ([("finetuned-aug", aug_spread)] if with_aug else [])
    for method, spread in methods:
        for i, e in enumerate(EPS):
            for k, sign in enumerate((1, -1)):
                rows.append({"model": f"m+{method}", "method": method, "episode_id": f"{e}-perm{k}", "base_episode": e,
                             "df": 1, "n_clusters": 2, "dim": 3, "accuracy": 0.7 + sign * spread * (1 + i % 3) / 2})
    write(root, "04/table5_episodes.csv", rows)


def test_c5_reproduced_when_augmentation_lowers_the_spread(tmp_path):
    c5_results(tmp_path, ft_spread=0.2, aug_spread=0.02)
    assert R.claim_c5(tmp_path)["verdict"] == R.REPRODUCED


def test_c5_not_reproduced_when_augmentation_raises_the_spread(tmp_path):
    c5_results(tmp_path, ft_spread=0.02, aug_spread=0.2)
    assert R.claim_c5(tmp_path)["verdict"] == R.NOT_REPRODUCED


def test_c5_without_the_aug_model_is_not_tested(tmp_path):
    c5_results(tmp_path, 0.2, 0.0, with_aug=False)
    row = R.claim_c5(tmp_path)
    assert row["verdict"] == R.NOT_TESTED and "finetuned-aug" in row["reason"]


# ---------------------------------------------------------------- C8: conditional ICC per condition

def c8_results(root: Path, icc_color: float) -> None:
    rows = []
    for cond, icc in (("color", icc_color), ("shape", 0.9)):
        for m, acc in ((R.KMEANS_IMG, 0.6), ("ICC (unconditional, k=2)", 0.65), ("ICC (Small)", icc),
                       ("ICC (gpt-4o)", 1.0)):
            rows += [{"model": m, "method": m, "episode_id": f"{cond}-{e}", "condition": cond, "n_clusters": 2,
                      "accuracy": acc + w} for e, w in zip(EPS, WOBBLE)]
    write(root, "06/table3_episodes.csv", rows)


def test_c8_reproduced_when_icc_beats_the_strongest_unconditional_baseline_everywhere(tmp_path):
    c8_results(tmp_path, icc_color=0.9)
    row = R.claim_c8(tmp_path)
    assert row["verdict"] == R.REPRODUCED, row
    assert "unconditional" in row["ours"] and "gpt" not in row["ours"]   # the stronger baseline; GPT is not ICC here


def test_c8_not_reproduced_when_one_condition_fails(tmp_path):
    c8_results(tmp_path, icc_color=0.62)   # beats k-means (0.60) but not the unconditional ICC (0.65)
    row = R.claim_c8(tmp_path)
    assert row["verdict"] == R.NOT_REPRODUCED and "color" in row["reason"]


def test_c8_missing_file_is_not_tested(tmp_path):
    assert R.claim_c8(tmp_path)["verdict"] == R.NOT_TESTED


# ---------------------------------------------------------------- z, the table and the report

def test_the_threshold_is_a_parameter(tmp_path):
    c3_results(tmp_path, [0.65 + 4 * w for w in WOBBLE])   # SC − Gen = 0.15 ± 0.15 per episode: z = 3 exactly
    assert "z=3.0" in R.claim_c3(tmp_path)["ours"]
    assert R.claim_c3(tmp_path, z=2.0)["verdict"] == R.REPRODUCED
    assert R.claim_c3(tmp_path, z=5.0)["verdict"] == R.NOT_REPRODUCED


def test_empty_results_give_eight_untested_rows_and_a_report(tmp_path):
    table = R.claims_table(tmp_path, 2.0)
    assert list(table["claim"]) == [f"C{i}" for i in range(1, 9)] and list(table.columns) == R.COLUMNS
    assert set(table["verdict"]) == {R.NOT_TESTED}
    assert table["paper"].str.len().gt(0).all()   # the paper's numbers are there even when ours are not
    text = R.write_report(table, tmp_path / "REPORT.md", "tiny", 2.0).read_text()
    assert all(f"| C{i} |" in text for i in range(1, 9)) and "No figures" in text


def test_report_links_figures_and_escapes_pipes(tmp_path):
    c1_results(tmp_path, [0.4 + w for w in WOBBLE])
    (tmp_path / "01" / "figure2_accuracy_vs_df.png").write_bytes(b"png")
    (tmp_path / "04" / "adapter" / "checkpoints").mkdir(parents=True)
    (tmp_path / "04" / "adapter" / "checkpoints" / "x.png").write_bytes(b"png")
    table = R.claims_table(tmp_path, 2.0)
    assert table.set_index("claim").loc["C1", "our_figure"] == "01/figure2_accuracy_vs_df.png"
    table.loc[0, "reason"] = "a | b"
    text = R.write_report(table, tmp_path / "REPORT.md", "tiny", 2.0).read_text()
    assert "(01/figure2_accuracy_vs_df.png)" in text and "checkpoints" not in text and "a \\| b" in text
    assert R.REPRODUCED in text


def test_report_module_does_not_import_torch():
    code = "import sys, icc_utils.report; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------- notebook 07 on the smoke results

SMOKE = RESULTS_DIR / PROFILE
#: One output per notebook that notebook 07 reads; a notebook whose output is missing is run first (clean clone).
KEY_OUTPUTS = {"00": DATA_DIR / PROFILE / "test_t.jsonl", "01": SMOKE / "01" / "fig2_episodes.csv",
               "02": SMOKE / "02" / "layer_profile.csv", "03": SMOKE / "03" / "sc_layers_episodes.csv",
               "04": SMOKE / "04" / "table1_episodes.csv", "05": SMOKE / "05" / "table2_episodes.csv",
               "06": SMOKE / "06" / "table3_episodes.csv"}


@pytest.fixture(scope="module")
def smoke_report():
    missing = [nb for nb, path in KEY_OUTPUTS.items() if not path.exists()]
    if missing:
        run_notebooks(PROFILE, only=missing, progress_bar=False)
    run_notebooks(PROFILE, only=["07"], progress_bar=False)
    return pd.read_csv(SMOKE / "07" / "claims.csv"), (SMOKE / "REPORT.md").read_text()


@pytest.mark.slow
def test_smoke_claims_csv(smoke_report):
    claims, _ = smoke_report
    assert list(claims["claim"]) == [f"C{i}" for i in range(1, 9)]
    assert set(claims["verdict"]) <= set(R.VERDICTS)
    assert claims["reason"].notna().all()


@pytest.mark.slow
def test_smoke_report_md(smoke_report):
    _, text = smoke_report
    assert all(f"C{i}" in text for i in range(1, 9))
    assert ".png)" in text
