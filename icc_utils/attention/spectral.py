"""Spectral clustering on attention (Appendix B.2) and the scikit-learn estimator built on it.

Preprocessing of ``A^II``: drop the diagonal, row-normalise, multiply each row by its number of
non-zero entries, symmetrise; then ``SpectralClustering(affinity="precomputed", random_state=0)``.
Dropping the diagonal (a point's attention to its own tokens) is not in the paper's text; the
authors' code (``src/spectral_clustering.py``) uses only the strictly lower triangle, so we do the
same by default (``exclude_diagonal=False`` keeps it).

:class:`AttentionSpectralClustering` does all of it for your own points: prompt, one forward
pass up to the chosen layer, ``A^II``, preprocessing, spectral clustering.
"""
from __future__ import annotations

import os
from numbers import Integral
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, ClusterMixin, _fit_context
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import validate_data

from ..models import DTYPE_CHOICES
from .extract import extract_attention_blocks, num_layers, resolve_layers
from .tokens import encode_episode

__all__ = ["drop_diagonal", "row_normalize", "scale_rows_by_nonzero", "symmetrize", "preprocessing_steps",
           "preprocess_affinity", "spectral_cluster_attention", "AttentionSpectralClustering", "resolve_model_path",
           "use_loaded_model"]


# ---------------------------------------------------------------- Appendix B.2 preprocessing

def drop_diagonal(A: np.ndarray) -> np.ndarray:
    """``A`` with a zero diagonal (a point's attention to its own tokens removed; authors' code)."""
    A = np.array(A, dtype=np.float64, copy=True)
    np.fill_diagonal(A, 0.0)
    return A


def row_normalize(A: np.ndarray) -> np.ndarray:
    """Each row divided by its sum (rows summing to 0 stay 0)."""
    A = np.asarray(A, dtype=np.float64)
    s = A.sum(axis=1, keepdims=True)
    return np.divide(A, s, out=np.zeros_like(A), where=s > 0)


def scale_rows_by_nonzero(A: np.ndarray) -> np.ndarray:
    """Each row multiplied by its number of non-zero entries (undoes the causal mask's uneven row mass)."""
    A = np.asarray(A, dtype=np.float64)
    return A * np.count_nonzero(A, axis=1)[:, None]


def symmetrize(A: np.ndarray) -> np.ndarray:
    """``(A + A^T) / 2``."""
    A = np.asarray(A, dtype=np.float64)
    return (A + A.T) / 2.0


def preprocessing_steps(A_ii: np.ndarray, exclude_diagonal: bool = True) -> dict[str, np.ndarray]:
    """Every stage of the Appendix B.2 preprocessing, in order (Figure 11); the last is the affinity."""
    A = np.asarray(A_ii, dtype=np.float64)
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"A_ii must be a square matrix, got shape {A.shape}")
    steps = {"A^II": A}
    if exclude_diagonal:
        A = drop_diagonal(A)
        steps["diagonal removed"] = A
    A = row_normalize(A)
    steps["row-normalised"] = A
    A = scale_rows_by_nonzero(A)
    steps["x non-zeros per row"] = A
    steps["symmetrised"] = symmetrize(A)
    return steps


def preprocess_affinity(A_ii: np.ndarray, exclude_diagonal: bool = True) -> np.ndarray:
    """The affinity matrix for spectral clustering (Appendix B.2)."""
    return preprocessing_steps(A_ii, exclude_diagonal)["symmetrised"]


def spectral_cluster_attention(A_ii: np.ndarray, n_clusters: int, random_state: int = 0,
                               exclude_diagonal: bool = True) -> np.ndarray:
    """Cluster labels from an ``A^II`` matrix: Appendix B.2 preprocessing, then
    ``sklearn.cluster.SpectralClustering(affinity="precomputed", random_state=random_state)``.

    k-means (in the spectral embedding) runs on one thread: on matrices this small OpenMP start-up
    dominates, and one thread gives the same labels.
    """
    from sklearn.cluster import SpectralClustering
    from threadpoolctl import threadpool_limits

    W = preprocess_affinity(A_ii, exclude_diagonal)
    if W.shape[0] <= n_clusters:
        return np.arange(W.shape[0])
    with threadpool_limits(1):
        return SpectralClustering(n_clusters=n_clusters, affinity="precomputed",
                                  random_state=random_state).fit_predict(W)


# ---------------------------------------------------------------- models for the estimator

#: Loaded ``(model, tokenizer)`` pairs by ``(model folder, dtype, adapter folder)``; at most one is kept.
_LOADED: dict[tuple[str, str, str | None], tuple] = {}

_MODEL_FORMS = ("'embedded' (or 'SmolLM2-135M-Instruct', 'HuggingFaceTB/SmolLM2-135M-Instruct'), "
                "a folder holding a transformers model, or the id of a hub model already in the local "
                "Hugging Face cache (e.g. 'meta-llama/Llama-3.1-8B-Instruct' after `hf download` of it)")


def resolve_model_path(model: str | os.PathLike) -> str:
    """The local folder of ``model``, found without the network (so an unknown name fails at once).

    ``model`` is one of the embedded model's names (converted on first use), a model folder, or a
    hub id whose files are in the local Hugging Face cache. Anything else raises ``ValueError``
    naming the parameter ``model`` and the allowed forms.
    """
    from huggingface_hub import try_to_load_from_cache

    from ..models import EMBEDDED_ALIASES, embedded_model_dir

    name = os.fspath(model)
    if name in EMBEDDED_ALIASES:
        return str(embedded_model_dir())
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path.resolve())
    try:
        config = try_to_load_from_cache(name, "config.json")
    except ValueError:  # not even a valid hub id (huggingface_hub's HFValidationError)
        config = None
    if isinstance(config, str):
        return str(Path(config).parent)
    raise ValueError(f"model={name!r} is not a local model; allowed: {_MODEL_FORMS}")


def _adapter_path(adapter: str | os.PathLike | None) -> str | None:
    if adapter is None:
        return None
    path = Path(os.fspath(adapter)).expanduser()
    if not (path / "adapter_config.json").is_file():
        raise ValueError(f"adapter={os.fspath(adapter)!r} is not a PEFT adapter folder (no adapter_config.json "
                         "in it); use None for the pretrained model")
    return str(path.resolve())


def _model_key(model, dtype: str, adapter) -> tuple[str, str, str | None]:
    from ..models import resolve_dtype

    return resolve_model_path(model), resolve_dtype(dtype), _adapter_path(adapter)


def use_loaded_model(model, tokenizer, name: str | os.PathLike, dtype: str = "float32",
                     adapter: str | os.PathLike | None = None) -> None:
    """Let estimators with these ``model``/``dtype``/``adapter`` parameters use a model already in memory
    (e.g. a notebook's generation backend) instead of loading a second copy."""
    _LOADED.clear()
    _LOADED[_model_key(name, dtype, adapter)] = (model, tokenizer)


def _load(model, dtype: str, adapter):
    """``(model, tokenizer)`` for the estimator's parameters, loaded once and cached."""
    from ..models import load_model_and_tokenizer

    key = _model_key(model, dtype, adapter)
    if key not in _LOADED:
        _LOADED.clear()  # keep at most one model in memory
        _LOADED[key] = load_model_and_tokenizer(key[0], adapter=key[2], dtype=key[1])
    return _LOADED[key]


# ---------------------------------------------------------------- estimator

class AttentionSpectralClustering(ClusterMixin, BaseEstimator):
    """Clustering by spectral clustering on a causal LM's attention between data points.

    ``fit(X)`` writes the rows of ``X`` into the paper's prompt (numbers with two decimals), reads
    ``A^II`` at ``layer`` from one forward pass (heads averaged, or one head) and clusters it with
    the Appendix B.2 preprocessing and ``SpectralClustering(affinity="precomputed")``.

    Parameters
    ----------
    model : str or path-like, default="embedded"
        The embedded SmolLM2-135M-Instruct (``"embedded"``), a transformers model folder, or a hub id
        already in the local Hugging Face cache. Loaded on the first fit and cached per
        ``(model, dtype, adapter)`` (:func:`use_loaded_model` shares one already in memory).
    layer : int or "middle", default="middle"
        Decoder layer (from 0; negative counts from the end); ``"middle"`` is ``(L-1)//2``.
    n_clusters : int, default=2
        Number of clusters (also stated in the prompt).
    head : int or None, default=None
        None averages the heads (the paper's choice); an int uses that head only.
    adapter : str, path-like or None, default=None
        A PEFT adapter folder to apply to the model.
    dtype : {"float32", "bfloat16", "float16", "auto"}, default="float32"
        Weights dtype (attention scores are computed in float32 either way).
    exclude_diagonal : bool, default=True
        Drop each point's attention to itself before clustering (the authors' code).
    random_state : int, RandomState instance or None, default=0
        Seed of spectral clustering's k-means step.

    Attributes
    ----------
    labels_ : ndarray of shape (n_samples,)
        Cluster of each point, in ``0..n_clusters-1``.
    attention_ : ndarray of shape (n_samples, n_samples)
        ``A^II`` at ``layer_`` (lower triangular: causal attention).
    affinity_matrix_ : ndarray of shape (n_samples, n_samples)
        The symmetric affinity that was clustered (:func:`preprocess_affinity`).
    layer_ : int
        The model layer used.
    n_features_in_ : int
        Number of features (coordinates per point) seen in ``fit``.

    Examples
    --------
    >>> from icc_utils.attention import AttentionSpectralClustering
    >>> est = AttentionSpectralClustering(n_clusters=2)          # doctest: +SKIP
    >>> est.fit_predict([[0.1, 0.2], [5.0, 5.1], [0.0, 0.3]])   # doctest: +SKIP
    """

    _parameter_constraints: dict = {
        "model": [str, os.PathLike],
        "layer": [Interval(Integral, None, None, closed="neither"), StrOptions({"middle"})],
        "n_clusters": [Interval(Integral, 1, None, closed="left")],
        "head": [Interval(Integral, 0, None, closed="left"), None],
        "adapter": [str, os.PathLike, None],
        "dtype": [StrOptions(set(DTYPE_CHOICES))],
        "exclude_diagonal": ["boolean"],
        "random_state": ["random_state"],
    }

    def __init__(self, model: str | os.PathLike = "embedded", layer: int | str = "middle", n_clusters: int = 2,
                 head: int | None = None, adapter: str | os.PathLike | None = None, dtype: str = "float32",
                 exclude_diagonal: bool = True, random_state=0):
        self.model = model
        self.layer = layer
        self.n_clusters = n_clusters
        self.head = head
        self.adapter = adapter
        self.dtype = dtype
        self.exclude_diagonal = exclude_diagonal
        self.random_state = random_state

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None) -> "AttentionSpectralClustering":
        """Cluster the rows of ``X`` (a 2-D array of finite numbers, one point per row); ``y`` is ignored."""
        X = validate_data(self, X, dtype=np.float64, ensure_min_samples=1)
        lm, tok = _load(self.model, self.dtype, self.adapter)
        (self.layer_,) = resolve_layers(self.layer, num_layers(lm))
        tokens = encode_episode(tok, np.round(X, 2).tolist(), int(self.n_clusters))
        blocks = extract_attention_blocks(lm, tokens, layers=[self.layer_], heads="mean" if self.head is None else "all")
        if self.head is None:
            attention = blocks.ii[0]
        else:
            n_heads = blocks.ii.shape[1]
            if self.head >= n_heads:
                raise ValueError(f"head={self.head!r} is out of range; layer {self.layer_} has {n_heads} heads "
                                 f"(0..{n_heads - 1}), or use None for the average")
            attention = blocks.ii[0, int(self.head)]
        self.attention_ = np.asarray(attention, dtype=np.float64)
        self.affinity_matrix_ = preprocess_affinity(self.attention_, self.exclude_diagonal)
        self.labels_ = spectral_cluster_attention(self.attention_, int(self.n_clusters), self.random_state,
                                                  self.exclude_diagonal)
        return self
