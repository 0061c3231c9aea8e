"""ICCClustering (icc_utils.estimators): scikit-learn conventions, input validation, adapters, the reply cache."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import icc_utils
from icc_utils.estimators import ICCClustering, resolve_adapter


def blobs(n: int = 12, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = np.array([[-5.0, -5.0], [5.0, 5.0]])
    return centres[np.arange(n) % 2] + rng.normal(scale=0.5, size=(n, 2))


@pytest.fixture
def tiny(tiny_llama_dir, tmp_path):
    """An ICCClustering on the tiny random Llama (fast, valid answers thanks to constrained decoding)."""
    return ICCClustering(n_clusters=2, model=str(tiny_llama_dir), adapter=None, dtype="float32",
                         cache=tmp_path / "replies.jsonl", threads=1)


# ---------------------------------------------------------------- scikit-learn conventions

def test_params_clone_and_repr():
    est = ICCClustering(n_clusters=4, adapter=None, constrained=False)
    assert est.get_params()["n_clusters"] == 4 and est.get_params()["constrained"] is False
    assert set(est.get_params()) == {"n_clusters", "model", "adapter", "constrained", "dtype", "batch_size",
                                     "cache", "threads"}
    copy = clone(est)
    assert copy is not est and copy.get_params() == est.get_params()
    assert est.set_params(n_clusters=5) is est and est.n_clusters == 5
    assert repr(est).startswith("ICCClustering(") and "n_clusters=5" in repr(est) and "adapter=None" in repr(est)


@pytest.mark.parametrize("params, name", [
    ({"n_clusters": 0}, "n_clusters"), ({"n_clusters": 2.5}, "n_clusters"), ({"dtype": "float64"}, "dtype"),
    ({"batch_size": 0}, "batch_size"), ({"constrained": "yes"}, "constrained"), ({"model": 3}, "model"),
    ({"threads": 0}, "threads"), ({"cache": 1.5}, "cache"),
])
def test_bad_parameters_name_the_parameter(params, name):
    with pytest.raises(ValueError, match=f"'{name}' parameter"):
        ICCClustering(adapter=None, **params).fit(blobs())


def test_bad_model_and_adapter_name_the_parameter(tmp_path):
    with pytest.raises(ValueError, match="model"):
        ICCClustering(model="nope", adapter=None).fit(blobs())
    with pytest.raises(ValueError, match="classical method"):
        ICCClustering(model="kmeans", adapter=None).fit(blobs())
    with pytest.raises(ValueError, match=r"adapter=.*not a PEFT adapter folder"):
        ICCClustering(adapter=str(tmp_path)).fit(blobs())
    with pytest.raises(ValueError, match="constrained=True needs a local model"):
        ICCClustering(model="served:m@http://127.0.0.1:9/v1", adapter=None).fit(blobs())


@pytest.mark.parametrize("X, message", [
    (np.array([[0.0, np.nan], [1.0, 2.0]]), "NaN"),
    (np.array([[0.0, np.inf], [1.0, 2.0]]), "infinity"),
    (np.array([1.0, 2.0, 3.0]), "2D array"),
    (np.array([["a", "b"], ["c", "d"]]), "could not convert|dtype"),
])
def test_input_is_validated_the_scikit_learn_way(X, message, tiny):
    with pytest.raises(ValueError, match=message):
        tiny.fit(X)


def test_more_clusters_than_samples_is_an_error(tiny):
    with pytest.raises(ValueError, match="n_clusters=5 .* only 3 samples"):
        tiny.set_params(n_clusters=5).fit(blobs(3))


def test_too_many_points_for_the_context_window(tiny):
    # the tiny model's context is 4096 tokens: 2000 points in 2-D do not fit (checked before generating)
    with pytest.raises(ValueError, match=r"X has 2000 samples: .* at most about \d+ samples of 2 features fit"):
        tiny.fit(blobs(2000))


# ---------------------------------------------------------------- fitting

def test_fit_predict_sets_the_fitted_attributes_and_the_cache_makes_a_repeat_instant(tiny, tmp_path):
    X = blobs(12)
    labels = tiny.fit_predict(X)
    assert isinstance(labels, np.ndarray) and labels.shape == (12,) and labels.dtype.kind == "i"
    assert np.array_equal(labels, tiny.labels_) and set(labels.tolist()) <= {0, 1}
    assert tiny.n_features_in_ == 2 and tiny.well_formed_ and isinstance(tiny.reply_, str)
    assert tiny.reply_.startswith("[") and not tiny.cached_
    records = [json.loads(line) for line in (tmp_path / "replies.jsonl").read_text().splitlines()]
    assert len(records) == 1 and records[0]["reply"] == tiny.reply_

    again = clone(tiny)  # a fresh estimator, the same settings: served from the cache
    t0 = time.perf_counter()
    assert np.array_equal(again.fit_predict(X), labels)
    assert again.cached_ and time.perf_counter() - t0 < 2.0
    assert len((tmp_path / "replies.jsonl").read_text().splitlines()) == 1


def test_unknown_number_of_clusters_uses_the_unknown_k_prompt(tiny):
    tiny.set_params(n_clusters=None).fit(blobs(8))
    assert tiny.labels_.shape == (8,) and tiny.well_formed_
    assert tiny.labels_.max() <= 7


def test_pipeline_after_a_scaler(tiny):
    pipe = make_pipeline(StandardScaler(), tiny)
    labels = pipe.fit_predict(blobs(10) * 100.0)
    assert labels.shape == (10,) and pipe[-1].n_features_in_ == 2


def test_adapter_folder_is_used(tiny_llama_dir, tmp_path):
    """A tiny LoRA adapter for the tiny model: loaded, named in the cache key, different replies."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    torch.manual_seed(0)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    est = ICCClustering(n_clusters=2, model=str(tiny_llama_dir), adapter=str(tmp_path / "adapter"), dtype="float32",
                        cache=tmp_path / "r.jsonl", threads=1).fit(blobs(10))
    assert est.well_formed_
    record = json.loads((tmp_path / "r.jsonl").read_text().splitlines()[0])
    assert "+adapter:" in record["model"]


def test_default_adapter_is_the_published_one(tmp_path, monkeypatch):
    monkeypatch.setattr(icc_utils, "ADAPTER_DIRS", (tmp_path / "pkg" / "icc-numeric", tmp_path / "models" / "icc-numeric"))
    with pytest.raises(ValueError, match=r"adapter='default' .* not installed.*adapter=None"):
        resolve_adapter("default", "embedded")
    assert resolve_adapter("default", "Qwen/Qwen2.5-0.5B-Instruct") is None  # the published adapter is SmolLM2's
    assert resolve_adapter(None, "embedded") is None
    folder = tmp_path / "models" / "icc-numeric"
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{}")
    assert resolve_adapter("default", "embedded") == str(folder)


# ---------------------------------------------------------------- the package

def test_importing_the_estimator_does_not_import_torch():
    code = ("import sys, icc_utils; assert 'torch' not in sys.modules; from icc_utils import ICCClustering; "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules; print(ICCClustering())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ICCClustering(")


@pytest.mark.embedded
def test_embedded_model_clusters_separated_blobs(embedded_dir, tmp_path):
    X = blobs(12, seed=3)
    est = ICCClustering(n_clusters=2, adapter=None, dtype="float32", cache=tmp_path / "r.jsonl", threads=1)
    labels = est.fit_predict(X)
    assert est.well_formed_ and labels.shape == (12,) and set(labels.tolist()) <= {0, 1}
