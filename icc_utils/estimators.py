"""In-context clustering as a scikit-learn estimator.

    >>> from icc_utils import ICCClustering
    >>> labels = ICCClustering(n_clusters=3).fit_predict(X)          # doctest: +SKIP

:class:`ICCClustering` writes the points of ``X`` into the paper's prompt (two decimals per
coordinate), asks a language model for the labels and parses its reply. It works like any
scikit-learn clusterer: ``clone``, ``get_params``/``set_params``, a ``Pipeline`` after a scaler.
Replies are cached on disk (:func:`icc_utils.cache_dir`), so fitting the same data again with the
same settings returns at once without loading the model weights.

The default ``adapter="default"`` is the study's published fine-tuned LoRA adapter of the embedded
model, looked for in :data:`icc_utils.ADAPTER_DIRS` (``icc_utils/adapters/icc-numeric/`` as
package data, then ``models/icc-numeric/`` of a checkout); ``adapter=None`` uses the base model.
"""
from __future__ import annotations

import os
import re
from collections import OrderedDict
from numbers import Integral
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, ClusterMixin, _fit_context
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_array

from .model_loading import DTYPE_CHOICES

#: Local models kept loaded between fits (each holds its weights in memory).
_LOADED: OrderedDict = OrderedDict()
_MAX_LOADED = 2


def resolve_adapter(adapter, model: str) -> str | None:
    """The adapter folder ``adapter`` names for ``model``: None, a PEFT folder, or ``"default"`` (the
    study's published adapter, for the embedded model only; no adapter for any other model).

    A missing folder, or one without ``adapter_config.json``, is a ValueError naming ``adapter``.
    """
    import icc_utils
    from .models import EMBEDDED_ALIASES

    if adapter is None:
        return None
    if isinstance(adapter, str) and adapter == "default":
        if model not in EMBEDDED_ALIASES:
            return None
        for folder in icc_utils.ADAPTER_DIRS:
            if (folder / "adapter_config.json").is_file():
                return str(folder)
        raise ValueError(f"adapter='default' names the study's published fine-tuned adapter, which is not "
                         f"installed here: no adapter_config.json in {[str(d) for d in icc_utils.ADAPTER_DIRS]}. "
                         f"Pass adapter=None to use the base model, or adapter='<a PEFT adapter folder>'")
    folder = Path(adapter).expanduser()
    if not (folder / "adapter_config.json").is_file():
        raise ValueError(f"adapter={str(adapter)!r} is not a PEFT adapter folder (no adapter_config.json there); "
                         "allowed: None, 'default', or a folder written by peft's save_pretrained")
    return str(folder.resolve())


def _local_backend(model: str, adapter: str | None, dtype: str, batch_size: int, threads):
    """A loaded-once :class:`~icc_utils.models.LocalChatModel` (the last two settings are kept)."""
    from .models import LocalChatModel, resolve_dtype

    key = (model, adapter, resolve_dtype(dtype), batch_size, threads)
    if key in _LOADED:
        _LOADED.move_to_end(key)
        return _LOADED[key]
    backend = LocalChatModel(model, adapter=adapter, dtype=dtype, batch_size=batch_size, threads=threads)
    _LOADED[key] = backend
    while len(_LOADED) > _MAX_LOADED:
        _LOADED.popitem(last=False)
    return backend


class ICCClustering(ClusterMixin, BaseEstimator):
    """Cluster the rows of ``X`` by in-context clustering with a language model.

    Parameters
    ----------
    n_clusters : int or None, default=3
        The number of clusters the prompt asks for; None uses the prompt without a count (the model
        chooses; constrained decoding then allows labels ``0..min(n, 10)-1``).
    model : str, default="embedded"
        ``embedded`` (SmolLM2-135M-Instruct, shipped offline), a hub id or local folder of a chat
        model, ``served:<model>@<base URL>`` or an OpenAI model (see :mod:`icc_utils.models`).
    adapter : str, path or None, default="default"
        A PEFT adapter folder for a local model; ``"default"``: the study's published adapter for
        the embedded model (none for other models); None: the base model.
    constrained : bool, default=True
        Force the reply to be exactly ``n`` labels in range (local models only).
    dtype : {"auto", "float32", "bfloat16", "float16"}, default="auto"
        Weights dtype of a local model; ``auto``: bfloat16 where this machine runs it natively.
    batch_size : int, default=8
        Prompts a local model generates at once (replies do not depend on it).
    cache : bool, str or path, default=True
        True: replies are cached in ``<cache_dir()>/replies/``; a path: that JSON Lines file;
        False: nothing is kept between fits.
    threads : int or None, default=None
        Torch threads for a local model (None: ``OMP_NUM_THREADS``, else the physical cores).

    Attributes
    ----------
    labels_ : ndarray of shape (n_samples,)
        The cluster of each row, ``0..n_clusters-1``; -1 where an unconstrained reply gave no
        valid label for the row.
    n_features_in_ : int
        Number of columns of ``X``.
    reply_ : str
        The model's raw reply.
    well_formed_ : bool
        Whether the reply was exactly one label in range per row.
    cached_ : bool
        Whether the reply came from the cache.
    """

    _parameter_constraints: dict = {
        "n_clusters": [Interval(Integral, 1, None, closed="left"), None],
        "model": [str],
        "adapter": [str, os.PathLike, None],
        "constrained": ["boolean"],
        "dtype": [StrOptions(set(DTYPE_CHOICES))],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "cache": ["boolean", str, os.PathLike],
        "threads": [Interval(Integral, 1, None, closed="left"), None],
    }

    def __init__(self, n_clusters=3, *, model="embedded", adapter="default", constrained=True, dtype="auto",
                 batch_size=8, cache=True, threads=None):
        self.n_clusters = n_clusters
        self.model = model
        self.adapter = adapter
        self.constrained = constrained
        self.dtype = dtype
        self.batch_size = batch_size
        self.cache = cache
        self.threads = threads

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Ask the model to cluster the rows of ``X`` (an array of finite numbers, n_samples x n_features)."""
        from .data import Episode

        X = check_array(X, dtype=np.float64)
        self.n_features_in_ = X.shape[1]
        n = X.shape[0]
        if self.n_clusters is not None and self.n_clusters > n:
            raise ValueError(f"n_clusters={self.n_clusters} is out of range; X has only {n} samples")
        backend = self._backend()
        episode = Episode.from_points(X, n_clusters=self.n_clusters, episode_id="X")
        self._check_fits(backend, episode)
        pred = backend.predict([episode], known_k=self.n_clusters is not None,
                               constrained=bool(self.constrained and backend.kind == "local"),
                               cache=self._reply_cache(backend), desc="ICCClustering")[0]
        self.labels_ = np.asarray(pred.labels, dtype=np.int64)
        self.reply_ = pred.reply
        self.well_formed_ = bool(pred.well_formed)
        self.cached_ = bool(pred.cached)
        return self

    # ------------------------------------------------------------ helpers

    def _backend(self):
        from .models import get_backend, model_kind

        try:
            kind = model_kind(self.model)
        except ValueError as exc:
            raise ValueError(f"model: {exc}") from None
        if kind == "classical":
            raise ValueError(f"model={self.model!r} is a classical method, not a language model; use "
                             f"sklearn.cluster for it, or model='embedded'")
        if kind == "local":
            return _local_backend(self.model, resolve_adapter(self.adapter, self.model), self.dtype,
                                  int(self.batch_size), self.threads)
        if self.constrained:
            raise ValueError(f"constrained=True needs a local model (the server picks the tokens of "
                             f"model={self.model!r}); pass constrained=False")
        if self.adapter not in (None, "default"):
            raise ValueError(f"adapter={self.adapter!r} applies to local models only, not model={self.model!r}")
        backend = get_backend(self.model)
        if not backend.available:
            raise RuntimeError(backend.unavailable_reason)
        return backend

    def _reply_cache(self, backend):
        import icc_utils
        from .cache import ReplyCache

        if self.cache is False:
            return None
        if self.cache is True:
            slug = re.sub(r"[^A-Za-z0-9._-]+", "_", backend.name).strip("_") or "model"
            return ReplyCache(icc_utils.cache_dir() / "replies" / f"estimator-{slug}.jsonl")
        return ReplyCache(Path(self.cache).expanduser())

    @staticmethod
    def _check_fits(backend, episode) -> None:
        """A clear error when the prompt and its answer do not fit the local model's context window."""
        if backend.kind != "local":
            return
        if not hasattr(backend, "context_length"):
            backend.context_length = _context_length(backend)
        context = backend.context_length
        if context is None:
            return
        prompt = len(backend.tokenizer(backend.render(episode, episode.n_clusters is not None),
                                       add_special_tokens=False).input_ids)
        answer = backend.answer_budget(episode.n_points, episode.n_clusters, True)
        if prompt + answer > context:
            per_point = (prompt + answer) / episode.n_points
            raise ValueError(f"X has {episode.n_points} samples: its prompt ({prompt} tokens) and answer ({answer} "
                             f"tokens) exceed the {context}-token context of model={backend.source!r}; at most "
                             f"about {int(context / per_point)} samples of {episode.dim} features fit")


def _context_length(backend) -> int | None:
    """The local model's context window from its config, without loading the weights."""
    from transformers import AutoConfig

    from .models import resolve_local_model

    try:
        config = AutoConfig.from_pretrained(resolve_local_model(backend.source))
    except (OSError, ValueError):
        return None
    config = getattr(config, "text_config", None) or config
    return getattr(config, "max_position_embeddings", None)
