"""The claims table and REPORT.md (icc_utils.report) on hand-made CSVs, and a papermill run of notebook 07 on the smoke results."""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from icc_utils import DATA_DIR, RESULTS_DIR
from icc_utils import claims as C
from icc_utils import report as R
from icc_utils import verdicts as V
from icc_utils.runner import run_notebooks

PROFILE = "smoke"
EPS = [f"e{i}" for i in range(40)]
WOBBLE = [0.05 * (-1) ** i for i in range(40)]  # a small spread, so standard errors are finite and non-zero


def write(root: Path, rel: str, rows: list[dict]) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)


# ---------------------------------------------------------------- z, the table and the report

def c1_results(root: Path) -> None:
    """Two small models at chance (constrained replies of more than one label, ARI about 0)."""
    rows = []
    for e, w in zip(EPS, WOBBLE):
        base = {"episode_id": e, "df": 1, "n_clusters": 3, "dim": 3, "well_formed": True, "n_pred_clusters": 2}
        rows.append({**base, "model": "chance", "method": "random labels", "accuracy": 0.4, "ari": 0.0})
        rows.append({**base, "model": "SmolLM2-135M-Instruct", "method": "zero-shot+constrained",
                     "accuracy": 0.4 + w, "ari": w / 5})
    write(root, "01/fig2_episodes.csv", rows)


def test_the_threshold_is_a_parameter(tmp_path):
    c1_results(tmp_path)   # ARI 0 ± 0.0016: the equivalence test has z = 0.05 / 0.0016 = 31
    assert C.claim_c1(tmp_path, z=2.0)["verdict"] == V.REPRODUCED
    assert C.claim_c1(tmp_path, z=40.0)["verdict"] == V.INCONCLUSIVE


def test_empty_results_give_eight_untested_rows_and_a_report(tmp_path):
    table = R.claims_table(tmp_path, 2.0)
    assert list(table["claim"]) == [f"C{i}" for i in range(1, 9)] and list(table.columns) == C.COLUMNS
    assert set(table["verdict"]) == {V.NOT_TESTABLE}
    assert table["paper"].str.len().gt(0).all()   # the paper's numbers are there even when ours are not
    text = R.write_report(table, tmp_path / "REPORT.md", "tiny", 2.0).read_text()
    assert all(f"| C{i} |" in text for i in range(1, 9)) and "No figures" in text


def test_report_links_figures_and_escapes_pipes(tmp_path):
    c1_results(tmp_path)
    (tmp_path / "01" / "figure2_accuracy_vs_df.png").write_bytes(b"png")
    (tmp_path / "04" / "adapter" / "checkpoints").mkdir(parents=True)
    (tmp_path / "04" / "adapter" / "checkpoints" / "x.png").write_bytes(b"png")
    table = R.claims_table(tmp_path, 2.0)
    assert table.set_index("claim").loc["C1", "our_figure"] == "01/figure2_accuracy_vs_df.png"
    table.loc[0, "reason"] = "a | b"
    text = R.write_report(table, tmp_path / "REPORT.md", "tiny", 2.0).read_text()
    assert "(01/figure2_accuracy_vs_df.png)" in text and "checkpoints" not in text and "a \\| b" in text
    assert V.REPRODUCED in text


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
    assert set(claims["verdict"]) <= set(V.VERDICTS)
    assert claims["reason"].notna().all()


@pytest.mark.slow
def test_smoke_report_md(smoke_report):
    _, text = smoke_report
    assert all(f"C{i}" in text for i in range(1, 9))
    assert ".png)" in text
