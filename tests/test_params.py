"""The parameter table (icc_utils.params), the notebooks' parameters and check cells, and the parameter files."""
from __future__ import annotations

import math

import nbformat
import pytest
import yaml

from icc_utils import NOTEBOOKS_DIR
from icc_utils import params as P
from icc_utils import params_sync as S
from icc_utils.profiles import available_profiles, load_profile, notebook_parameters
from icc_utils.validation import Ints, Models, Nums, list_from_text

#: Notebooks another change is editing: the lead runs ``python -m icc_utils.params_sync sync-notebooks 05 06``
#: after merging it, then empties this set (the tests below then pass for them; until then they xfail).
PENDING: set[str] = set()


def _pending(notebook):
    return pytest.param(notebook, marks=pytest.mark.xfail(strict=True, reason="cells not generated yet")) \
        if notebook in PENDING else notebook


ALL = [_pending(nb) for nb in P.NOTEBOOKS]


# ---------------------------------------------------------------- the table and the profiles

def test_default_profile_holds_every_parameter_in_table_order():
    assert list(load_profile("default")) == list(P.PARAMS)
    for name, p in P.PARAMS.items():
        assert p.notebooks and set(p.notebooks) <= set(P.NOTEBOOKS), name
        assert p.doc and "=" not in p.doc, name   # papermill reads one '=' per parameter line
        assert str(p.rule)


@pytest.mark.parametrize("profile", available_profiles())
def test_every_profile_passes_every_notebooks_checks(profile, monkeypatch):
    from icc_utils import models as M
    from icc_utils import model_loading as ML

    monkeypatch.setattr(ML, "native_bf16", lambda: False)
    values = load_profile(profile)
    for nb in P.NOTEBOOKS:
        checked = P.check_values(nb, values)
        assert set(checked) == set(P.declared(nb))


@pytest.mark.parametrize("notebook", list(P.NOTEBOOKS))
def test_the_notebooks_declare_the_tables_parameters(notebook):
    """papermill's inspection of the notebook finds exactly the table's parameters (no unknown-parameter warnings)."""
    assert set(notebook_parameters(NOTEBOOKS_DIR / P.NOTEBOOKS[notebook].file)) == set(P.declared(notebook))


# ---------------------------------------------------------------- the notebooks' cells

@pytest.mark.parametrize("notebook", ALL)
def test_parameters_cell_is_the_default_profile(notebook):
    """A notebook run with no parameters (Jupyter, plain papermill) is the default profile's run."""
    nb = nbformat.read(NOTEBOOKS_DIR / P.NOTEBOOKS[notebook].file, as_version=4)
    p, _ = S.notebook_cells(nb)
    default = load_profile("default")
    assert S.cell_values(nb.cells[p].source) == {k: default[k] for k in P.declared(notebook)}


@pytest.mark.parametrize("notebook", ALL)
def test_check_cell_is_generated(notebook):
    nb = nbformat.read(NOTEBOOKS_DIR / P.NOTEBOOKS[notebook].file, as_version=4)
    _, c = S.notebook_cells(nb)
    assert nb.cells[c].source == S.check_source(notebook)
    assert len([ln for ln in nb.cells[c].source.splitlines() if ln and not ln.startswith(("from", "import"))]) == 1


def test_sync_notebook_rewrites_only_the_two_cells(tmp_path):
    src = nbformat.read(NOTEBOOKS_DIR / P.NOTEBOOKS["07"].file, as_version=4)
    p, c = S.notebook_cells(src)
    src.cells[p].source = 'profile = "smoke"\nverdict_z = 3'
    src.cells[c].source = "print('old checks')"
    (tmp_path / P.NOTEBOOKS["07"].file).write_text(nbformat.writes(src))
    assert S.sync_notebook("07", tmp_path) == [f"{P.NOTEBOOKS['07'].file}: parameters cell",
                                               f"{P.NOTEBOOKS['07'].file}: check cell"]
    out = nbformat.read(tmp_path / P.NOTEBOOKS["07"].file, as_version=4)
    assert S.cell_values(out.cells[p].source) == {"profile": "default", "verdict_z": 2.0}
    assert out.cells[c].source == S.check_source("07")
    assert [x.source for i, x in enumerate(out.cells) if i not in (p, c)] == \
        [x.source for i, x in enumerate(src.cells) if i not in (p, c)]
    assert S.sync_notebook("07", tmp_path) == []


def test_literal_round_trips():
    import ast

    for v in [None, True, 3, 0.0005, 1e-5, "a {b}", 'q"uote', [1, 2.5], [{"name": "x", "dfs": [100]}], math.inf]:
        text = S.literal(v)
        assert (eval(text) if v == math.inf else ast.literal_eval(text)) == v, text


# ---------------------------------------------------------------- parameter files for papermill -f

def test_parameter_files_are_in_sync_with_the_profiles():
    assert S.sync_files(write=False) == [], "run: python -m icc_utils.params_sync sync-files"


@pytest.mark.parametrize("profile", available_profiles())
def test_parameter_files_hold_exactly_the_notebooks_parameters(profile):
    values = load_profile(profile)
    for nb in P.NOTEBOOKS:
        text = (S.PARAMETERS_DIR / profile / f"{nb}.yml").read_text()
        loaded = yaml.safe_load(text)   # how papermill -f reads it
        assert loaded == {k: values[k] for k in P.declared(nb)}
        assert list(loaded) == P.declared(nb)


# ---------------------------------------------------------------- validation: lists as text, models

def test_lists_given_as_text_parse_or_say_how_to_pass_them():
    assert list_from_text("fig2_dfs", "[1, 2]") == [1, 2]
    assert Nums(0.01)("fig2_dfs", "[1, 2.5]") == [1, 2.5]
    assert Models()("models", "[embedded, kmeans]") == ["embedded", "kmeans"]
    for text in ("1, 2", "7", "[1, 2"):
        with pytest.raises(ValueError, match=r"""fig2_dfs=.* is text, not a list; pass a list with papermill -y "fig2_dfs: """):
            Nums(0.01)("fig2_dfs", text)
    with pytest.raises(ValueError, match=r"dims=\[0, 3\] has values that are not allowed: \[0\]"):
        Ints(1, 16)("dims", "[0, 3]")


def test_check_values_lists_every_bad_parameter():
    values = dict(load_profile("smoke"), seed=-1, ft_lora_r=0, t1_dfs="1, 100")
    with pytest.raises(ValueError) as e:
        P.check_values("04", values)
    msg = str(e.value)
    assert msg.startswith("3 parameters are not allowed")
    assert "seed=-1" in msg and "ft_lora_r=0" in msg and "-y \"t1_dfs:" in msg
    with pytest.raises(ValueError, match="declares .*'verdict_z'.* sync-notebooks 07"):
        P.check_values("07", {"profile": "smoke"})


def test_dtype_auto_is_resolved(monkeypatch, capsys):
    from icc_utils import models as M
    from icc_utils import model_loading as ML

    monkeypatch.setattr(ML, "native_bf16", lambda: True)
    assert P.check_values("01", load_profile("default"))["dtype"] == "bfloat16"
    monkeypatch.setattr(ML, "native_bf16", lambda: False)
    assert P.check_values("01", load_profile("default"))["dtype"] == "float32"


@pytest.mark.parametrize("contents", [[], ["tokenizer.json"]])
def test_a_model_folder_that_is_not_a_model_fails_naming_parameter_and_path(tmp_path, contents):
    """Issue 39 fault 6: an empty folder (or one without config.json) fails in the check cell."""
    folder = tmp_path / "my-model"
    folder.mkdir()
    for name in contents:
        (folder / name).write_text("{}")
    values = load_profile("smoke")
    with pytest.raises(ValueError) as e:
        P.check_values("02", dict(values, model=str(folder)))
    assert f"model='{folder}'" in str(e.value) and str(folder) in str(e.value) and "config.json" in str(e.value)
    with pytest.raises(ValueError, match=r"models='.*my-model'.*config.json"):
        P.check_values("01", dict(values, models=["kmeans", str(folder)]))
    (folder / "config.json").write_text("{}")
    assert P.check_values("02", dict(values, model=str(folder)))["model"] == str(folder)


def test_unknown_models_name_the_allowed_forms():
    values = load_profile("smoke")
    with pytest.raises(ValueError) as e:
        P.check_values("01", dict(values, models=["kmeans", "no-such-model"]))
    assert str(e.value).startswith("models:") and "<local model directory>" in str(e.value) and "'embedded'" in str(e.value)
    with pytest.raises(ValueError, match=r"model: .*'\./no/such/folder'.*there is no folder"):
        P.check_values("03", dict(values, model="./no/such/folder"))
    with pytest.raises(ValueError, match="model='kmeans' is a classical model, not allowed here"):
        P.check_values("04", dict(values, model="kmeans"))


# ---------------------------------------------------------------- cross checks (issue 39 fault 1)

@pytest.fixture
def smoke_data(tmp_path, monkeypatch):
    """data/smoke/ as notebook 00 writes it for test_n_per_cell=3 (a few cells only), in a temporary folder."""
    from icc_utils import data as D

    out = tmp_path / "smoke"
    out.mkdir()
    t = D.make_grid("t", [2, 3], [1, 2, 3], [1, 2, 100], 3, 0, "test", (10, 12))
    logn = D.make_grid("lognormal", [2, 3, 4], [1, 3], [None], 3, 0, "test", (10, 12))
    D.save_episodes(out / "test_t.jsonl", t)
    D.save_episodes(out / "test_lognormal.jsonl", logn)
    D.write_manifest(out / "manifest.json", {"test_t": out / "test_t.jsonl", "test_lognormal": out / "test_lognormal.jsonl"},
                     {"test_n_per_cell": 3})
    monkeypatch.setattr(P, "DATA_DIR", tmp_path)
    return dict(load_profile("smoke"), grid_n_clusters=[2, 3], grid_dims=[1, 2])


@pytest.mark.parametrize("notebook, key, value, available", [
    ("01", "n_per_cell", 4, 3), ("01", "section_n_per_cell", 5, 3), ("01", "unknown_k_n_per_cell", 3, 2),
    ("03", "sc_n_per_cell", 9, 3),
])
def test_a_count_above_what_notebook_00_generated_is_an_error(smoke_data, notebook, key, value, available):
    values = dict(smoke_data, t1_dfs=[1], t5_dfs=[1], fig7_dims=[1], t4_dims=[1])
    P.validated(notebook, values)                              # the smoke profile's own counts fit
    with pytest.raises(ValueError) as e:
        P.validated(notebook, dict(values, **{key: value}))
    assert e.value.args[0].startswith(f"{key}={value} is more than the {available} episode(s) available in cell ")
    assert f"use {key} <= {available}" in str(e.value)


@pytest.mark.parametrize("key, value", [("t1_n_per_df", [2]), ("t4_n_per_cell", 2), ("t5_n_per_cell", 2)])
def test_the_verdict_block_must_fit_in_what_notebook_00_generated(smoke_data, key, value):
    """Notebook 04 scores episodes verdict_start .. verdict_start + n - 1 of each cell (smoke: 2 + 1 of 3)."""
    values = dict(smoke_data, t1_dfs=[1], t5_dfs=[1], fig7_dims=[1], t4_dims=[1], t4_n_clusters=[2])
    P.validated("04", values)
    with pytest.raises(ValueError) as e:
        P.validated("04", dict(values, **{key: value}))
    assert e.value.args[0].startswith(f"verdict_start + {key}=4 is more than the 3 episode(s) available in cell ")
    assert f"use verdict_start + {key} <= 3" in str(e.value)


def test_a_cell_notebook_00_did_not_generate_is_an_error(smoke_data):
    with pytest.raises(ValueError, match=r"n_per_cell=2: cell t-c3-d3-df5 of test_t has no episodes"):
        P.validated("01", dict(smoke_data, fig2_dfs=[1, 5]))
    with pytest.raises(ValueError, match="unknown_k_n_per_cell=2: cell t-c3-d3-df2 .*among Figure 2's episodes"):
        P.validated("01", dict(smoke_data, unknown_k_dfs=[2]))


def test_missing_data_says_to_run_notebook_00(tmp_path, monkeypatch):
    monkeypatch.setattr(P, "DATA_DIR", tmp_path)
    with pytest.raises(ValueError, match=r"data/smoke/manifest.json does not exist: run notebook 00 first"):
        P.validated("01", load_profile("smoke"))


def test_derived_values(smoke_data):
    got = P.validated("04", dict(smoke_data, t1_dfs=[1], t5_dfs=[1], fig7_dims=[1], t4_dims=[1]))
    assert got["curriculum"] == [] and got["config"].lora_r == 4
    assert P.validated("03", dict(smoke_data, finetuned_adapter=""))["finetuned_dir"] is None
    assert P.validated("03", smoke_data)["finetuned_dir"].endswith("2-c2d1-separated")
    assert P.validated("05", load_profile("smoke"))["dtype"] == "float32"
    with pytest.raises(ValueError, match="sc_gen_constrained_modes=\\[True\\] must include false"):
        P.validated("03", dict(smoke_data, sc_gen_constrained_modes=[True]))


def test_doc_table_lists_every_parameter():
    table = S.doc_table()
    for name in P.PARAMS:
        assert f"| `{name}` |" in table
    assert S.main(["doc"]) == 0
