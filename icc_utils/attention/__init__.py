"""Attention as a clustering signal (paper Section 3.2, Figure 3, Appendix B).

For one episode and a causal LM with its own chat template:

* :mod:`~icc_utils.attention.tokens`: which tokens belong to which data point (character offsets,
  no bracket token ids) and which token is each answer label (:func:`encode_episode`).
* :mod:`~icc_utils.attention.aggregate`: token-level attention reduced to data-level blocks,
  ``A^II`` (eq. 2), ``A^OI`` and ``A^OO`` (eq. 3), as ``P^T A P``.
* :mod:`~icc_utils.attention.extract`: each layer's attention recomputed by a hook during one
  fast forward pass and reduced at once (:func:`extract_attention_blocks`); the layer helpers.
* :mod:`~icc_utils.attention.spectral`: the Appendix B.2 preprocessing, spectral clustering on
  ``A^II``, and :class:`AttentionSpectralClustering`, a scikit-learn estimator.
* :mod:`~icc_utils.attention.analysis`: notebooks 02 and 03's analyses (cluster contrast, per-layer
  profile, spectral clustering at every layer, Table 6).

Everything public is re-exported here: ``from icc_utils import attention as A``.
"""
from __future__ import annotations

from .aggregate import aggregate_blocks, aggregate_blocks_loop, segment_matrix, segment_runs
from .analysis import (ANSWER_MODES, answers_for, choose_layer, cluster_contrast, layer_profile, order_by_cluster,
                       output_dir, gen_name, sc_at_layer, sc_layer_scores, sc_summary, table6)
from .extract import (PAPER_N_LAYERS, PAPER_SC_LAYER, AttentionBlocks, decoder_layers, episode_attention,
                      extract_attention_blocks, layer_attention, middle_layer, num_layers, relative_depth_layer,
                      resolve_layers)
from .spectral import (AttentionSpectralClustering, drop_diagonal, preprocess_affinity, preprocessing_steps,
                       resolve_model_path, row_normalize, scale_rows_by_nonzero, spectral_cluster_attention,
                       symmetrize, use_loaded_model)
from .tokens import (EpisodeTokens, LabelTokenError, assign_tokens_to_points, encode_episode, label_char_spans,
                     label_token_positions, point_char_spans)

__all__ = [
    # tokens
    "LabelTokenError", "EpisodeTokens", "point_char_spans", "label_char_spans", "assign_tokens_to_points",
    "label_token_positions", "encode_episode",
    # aggregation and extraction
    "segment_matrix", "segment_runs", "aggregate_blocks", "aggregate_blocks_loop",
    "PAPER_SC_LAYER", "PAPER_N_LAYERS", "AttentionBlocks", "decoder_layers", "num_layers", "middle_layer",
    "relative_depth_layer", "resolve_layers", "layer_attention", "extract_attention_blocks", "episode_attention",
    # Appendix B.2 and the estimator
    "drop_diagonal", "row_normalize", "scale_rows_by_nonzero", "symmetrize", "preprocessing_steps",
    "preprocess_affinity", "spectral_cluster_attention", "AttentionSpectralClustering", "resolve_model_path",
    "use_loaded_model",
    # notebook analyses
    "ANSWER_MODES", "order_by_cluster", "output_dir", "answers_for", "cluster_contrast", "layer_profile",
    "sc_layer_scores", "sc_summary", "table6", "choose_layer", "sc_at_layer", "gen_name",
]
