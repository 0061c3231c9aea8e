"""AttentionSpectralClustering follows scikit-learn's conventions: parameters stored as given,
declarative validation in fit, check_array-style input errors, clone, Pipeline, a fast failure
for an unknown model, and a cached model across fits."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from icc_utils import attention as A
from icc_utils.attention import AttentionSpectralClustering as ASC
from icc_utils.attention import spectral
from icc_utils.metrics import clustering_accuracy


def _blobs(n: int = 12, d: int = 2, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    X = np.where(y[:, None] == 0, -5.0, 5.0) + rng.normal(0, 0.5, (n, d))
    return X, y


@pytest.fixture()
def count_loads(monkeypatch):
    """Count the estimator's model loads (it calls icc_utils.models.load_model_and_tokenizer)."""
    from icc_utils import models

    calls = []
    real = models.load_model_and_tokenizer

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(models, "load_model_and_tokenizer", counting)
    monkeypatch.setattr(spectral, "_LOADED", {})
    return calls


# ---------------------------------------------------------------- parameters

def test_repr_shows_the_parameters_that_differ_from_the_defaults():
    assert repr(ASC()) == "AttentionSpectralClustering()"
    assert repr(ASC(n_clusters=3, layer=5)) == "AttentionSpectralClustering(layer=5, n_clusters=3)"


def test_get_params_set_params_and_clone_keep_parameters_as_given():
    folder = Path("some") / "model"
    est = ASC(model=folder, layer=-1, n_clusters=4, head=2, dtype="auto", random_state=7)
    params = est.get_params()
    assert params == {"model": folder, "layer": -1, "n_clusters": 4, "head": 2, "adapter": None, "dtype": "auto",
                      "exclude_diagonal": True, "random_state": 7}
    assert params["model"] is folder  # stored as given, not resolved or loaded in __init__
    twin = clone(est)
    assert twin is not est and twin.get_params() == params
    assert est.set_params(n_clusters=2, layer="middle") is est and est.n_clusters == 2 and est.layer == "middle"
    with pytest.raises(ValueError, match="Invalid parameter 'n_layer'"):
        est.set_params(n_layer=3)


def test_init_does_not_validate_and_fit_names_the_bad_parameter():
    X, _ = _blobs()
    for params, name in [({"n_clusters": 0}, "n_clusters"), ({"n_clusters": 2.5}, "n_clusters"),
                         ({"layer": "top"}, "layer"), ({"head": -1}, "head"), ({"dtype": "float8"}, "dtype"),
                         ({"exclude_diagonal": "yes"}, "exclude_diagonal"), ({"model": 3}, "model")]:
        est = ASC(**params)  # no error in __init__ (scikit-learn convention)
        with pytest.raises(ValueError, match=f"The '{name}' parameter of AttentionSpectralClustering must be"):
            est.fit(X)


# ---------------------------------------------------------------- input

def test_non_finite_input_is_rejected_before_any_model_is_loaded(count_loads):
    X, _ = _blobs()
    for bad, match in [(np.nan, "NaN"), (np.inf, "infinity")]:
        Xb = X.copy()
        Xb[3, 1] = bad
        with pytest.raises(ValueError, match=match):
            ASC().fit(Xb)
    assert count_loads == []


def test_one_dimensional_and_empty_input_are_rejected(count_loads):
    with pytest.raises(ValueError, match="Expected 2D array, got 1D array"):
        ASC().fit(np.arange(6.0))
    with pytest.raises(ValueError, match="0 sample"):
        ASC().fit(np.zeros((0, 2)))
    assert count_loads == []


def test_unknown_model_fails_fast_naming_the_parameter_and_the_allowed_forms(count_loads, tmp_path):
    X, _ = _blobs()
    for name in ["nope", "nobody/no-such-model-xyz", str(tmp_path / "missing-folder")]:
        start = time.perf_counter()
        with pytest.raises(ValueError, match="model=") as err:
            ASC(model=name).fit(X)
        assert time.perf_counter() - start < 5.0
        msg = str(err.value)
        assert repr(name) in msg and "'embedded'" in msg and "folder" in msg and "Hugging Face cache" in msg
    assert count_loads == []


def test_adapter_that_is_not_a_peft_folder_is_rejected(tiny_llama_dir, tmp_path, count_loads):
    X, _ = _blobs()
    with pytest.raises(ValueError, match="adapter=.*not a PEFT adapter folder"):
        ASC(model=str(tiny_llama_dir), adapter=str(tmp_path)).fit(X)
    assert count_loads == []


# ---------------------------------------------------------------- fitting (tiny random models)

def test_fit_sets_labels_features_and_attention(tiny_llama_dir, count_loads):
    X, _ = _blobs(n=10, d=3)
    est = ASC(model=str(tiny_llama_dir), layer=-1, n_clusters=3)
    assert est.fit(X) is est
    assert est.labels_.shape == (10,) and set(est.labels_.tolist()) <= {0, 1, 2}
    assert est.n_features_in_ == 3 and est.layer_ == 1  # the tiny Llama has 2 layers
    assert est.attention_.shape == est.affinity_matrix_.shape == (10, 10)
    assert np.allclose(est.affinity_matrix_, est.affinity_matrix_.T)
    assert np.allclose(est.attention_, np.tril(est.attention_))  # causal: nothing above the diagonal
    # deterministic, and the model is loaded once for repeated fits, clones included
    again = clone(est).fit_predict(X)
    assert np.array_equal(again, est.labels_) and np.array_equal(est.fit_predict(X), again)
    assert len(count_loads) == 1


def test_layer_and_head_are_checked_against_the_model(tiny_qwen2_dir):
    X, _ = _blobs()
    with pytest.raises(ValueError, match="layer=2 is out of range; the model has 2 layers"):
        ASC(model=str(tiny_qwen2_dir), layer=2).fit(X)
    with pytest.raises(ValueError, match="head=4 is out of range; layer 0 has 4 heads"):
        ASC(model=str(tiny_qwen2_dir), layer=0, head=4).fit(X)
    est = ASC(model=str(tiny_qwen2_dir), layer=0, head=3).fit(X)
    assert est.labels_.shape == (12,)


def test_same_labels_as_the_per_layer_sweep_of_notebook_03(tiny_llama_dir):
    """Notebook 03 takes SC(l*) from the estimator and SC(opt) from the all-layer sweep: both must agree."""
    from icc_utils.data import generate_episode
    from icc_utils.models import load_model_and_tokenizer

    lm, tok = load_model_and_tokenizer(str(tiny_llama_dir))
    for seed, dim in [(5, 1), (6, 3)]:
        ep = generate_episode(seed, "t", 3, dim, df=2.0, n_points=15)
        blocks = A.extract_attention_blocks(lm, A.encode_episode(tok, ep.points, 3), layers="all")
        for layer in blocks.layers:
            est = ASC(model=str(tiny_llama_dir), layer=layer, n_clusters=3).fit(ep.points)
            np.testing.assert_array_equal(est.attention_, blocks.ii[layer])
            np.testing.assert_array_equal(est.labels_, A.spectral_cluster_attention(blocks.ii[layer], 3))


def test_in_a_pipeline_after_standard_scaler(tiny_llama_dir):
    X, _ = _blobs(n=9, d=2)
    pipe = make_pipeline(StandardScaler(), ASC(model=str(tiny_llama_dir), n_clusters=2))
    labels = pipe.fit_predict(X * 100 + 3)
    assert labels.shape == (9,) and set(labels.tolist()) <= {0, 1}
    assert pipe[-1].n_features_in_ == 2
    assert np.array_equal(clone(pipe).fit_predict(X * 100 + 3), labels)


def test_use_loaded_model_shares_a_model_in_memory(tiny_llama_dir, count_loads):
    from icc_utils.models import load_model_and_tokenizer

    lm, tok = load_model_and_tokenizer(str(tiny_llama_dir))
    A.use_loaded_model(lm, tok, name=str(tiny_llama_dir), dtype="float32")
    n_before = len(count_loads)
    ASC(model=str(tiny_llama_dir)).fit(_blobs()[0])
    assert len(count_loads) == n_before  # no second copy loaded


# ---------------------------------------------------------------- the embedded model, end to end

@pytest.mark.embedded
def test_embedded_model_end_to_end(embedded_dir):
    """Two blobs 22 units apart; layer 20, head 6 of the 135M model separates them (found with notebook
    02's per-head view). The model is named as users name it, ``"embedded"``."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 24)
    y[:2] = [0, 1]
    X = np.where(y[:, None] == 0, [-8.0, 8.0], [8.0, -8.0]) + rng.normal(0, 0.5, (24, 2))
    est = ASC(model="embedded", layer=20, n_clusters=2, head=6)
    labels = est.fit_predict(X)
    assert labels.shape == (24,) and set(labels.tolist()) <= {0, 1}
    assert clustering_accuracy(y, labels) >= 0.9
    assert est.n_features_in_ == 2 and est.layer_ == 20 and est.attention_.shape == (24, 24)
    avg = ASC(model="embedded", n_clusters=2)  # heads averaged at the middle layer: valid, deterministic labels
    first = avg.fit_predict(X)
    assert avg.layer_ == 14 and np.array_equal(first, avg.fit_predict(X))
    with pytest.raises(ValueError, match="head=9 is out of range; layer 20 has 9 heads"):
        ASC(model="embedded", layer=20, n_clusters=2, head=9).fit(X)
