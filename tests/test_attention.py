"""icc_utils.attention: segments from offsets, per-layer attention by hooks, aggregation, B.2 preprocessing."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from icc_utils import attention as A
from icc_utils.data import generate_episode
from icc_utils.metrics import clustering_accuracy
from icc_utils.models import load_model_and_tokenizer
from icc_utils.prompts import format_number


# ---------------------------------------------------------------- fixtures
# (the estimator AttentionSpectralClustering is tested in test_attention_estimator.py)

@pytest.fixture(scope="module")
def embedded(embedded_dir):
    return load_model_and_tokenizer(str(embedded_dir), dtype="float32")


@pytest.fixture(scope="module")
def tiny_llama(tiny_llama_dir):
    return load_model_and_tokenizer(str(tiny_llama_dir), dtype="float32")


@pytest.fixture(scope="module")
def tiny_qwen2(tiny_qwen2_dir):
    return load_model_and_tokenizer(str(tiny_qwen2_dir), dtype="float32")


def _episodes():
    """t-data with heavy tails (negative numbers, values beyond +-10), 1-4 dims, 10-50 points."""
    eps = []
    for i, (d, n) in enumerate([(1, 10), (2, 23), (3, 37), (4, 50), (1, 50), (4, 10)]):
        eps.append(generate_episode(100 + i, "t", 2 + i % 3, d, df=1.0, n_points=n))
    return eps


def _eager_attentions(model, input_ids):
    model.set_attn_implementation("eager")
    try:
        with torch.inference_mode():
            out = model(torch.tensor([input_ids]), output_attentions=True)
    finally:
        model.set_attn_implementation("sdpa")
    return [a[0].float() for a in out.attentions]


# ---------------------------------------------------------------- character spans

def test_point_char_spans_parses_inner_lists():
    data = "[[-0.93, 9.78], [4.85, -10.01], [0.00, 1.00]]"
    spans = A.point_char_spans(data, offset=7)
    assert [data[s - 7:e - 7] for s, e in spans] == ["[-0.93, 9.78]", "[4.85, -10.01]", "[0.00, 1.00]"]
    with pytest.raises(ValueError):
        A.point_char_spans("[[1, [2]]]")
    with pytest.raises(ValueError):
        A.point_char_spans("[[1, 2]")


def test_overlap_rule_for_straddling_tokens():
    spans = [(1, 6), (8, 13)]  # "[[1.0], [2.0]]": points at [1,6) and [8,13)
    # tokens: '[[' (0,2) straddles outer/point 0; '],' (5,7) closes point 0; ' [' (7,9) opens point 1;
    # '], [' (5,9) would overlap both (1 char each): tie -> earlier point; ']]' (12,14)
    owner = A.assign_tokens_to_points([(0, 2), (2, 5), (5, 7), (7, 9), (9, 12), (12, 14)], spans)
    assert owner.tolist() == [0, 0, 0, 1, 1, 1]
    owner = A.assign_tokens_to_points([(0, 0), (0, 2), (2, 5), (5, 9), (9, 12), (12, 14)], spans)
    assert owner.tolist() == [-1, 0, 0, 0, 1, 1]
    with pytest.raises(ValueError, match="own no token"):
        A.assign_tokens_to_points([(0, 6)], spans)


@pytest.mark.parametrize("which", ["embedded", "tiny_llama", "tiny_qwen2"])
def test_segments_cover_exactly_each_point(which, request):
    model, tok = request.getfixturevalue(which)
    for ep in _episodes():
        enc = A.encode_episode(tok, ep.points, ep.n_clusters, ep.labels)
        assert enc.n_points == ep.n_points
        for i, p in enumerate(ep.points):
            idx = enc.point_tokens(i)
            assert len(idx) and np.all(np.diff(idx) == 1), "a point's tokens are contiguous"
            covered = enc.text[enc.offsets[idx[0]][0]:enc.offsets[idx[-1]][1]]
            inner = ", ".join(format_number(x) for x in p)
            assert covered.strip(" ,[]") == inner, (which, i, covered)
        # every label is one token whose text is the label (maybe with a space or bracket)
        for lab, pos in zip(ep.labels, enc.label_positions):
            s, e = enc.offsets[pos]
            assert enc.text[s:e].strip(" ,[]") == str(lab)
        assert enc.label_positions.tolist() == sorted(enc.label_positions.tolist())


def test_segments_with_and_without_bos(tiny_llama, tiny_qwen2):
    ep = _episodes()[1]
    llama_tok, qwen_tok = tiny_llama[1], tiny_qwen2[1]
    with_bos = A.encode_episode(llama_tok, ep.points, 2)
    without = A.encode_episode(qwen_tok, ep.points, 2)
    assert with_bos.input_ids[0] == llama_tok.bos_token_id
    assert qwen_tok.bos_token_id is None or without.input_ids[0] != qwen_tok.bos_token_id
    assert with_bos.label_positions is None and len(with_bos.segments()) == len(without.segments()) == ep.n_points


def test_multi_token_label_raises(tiny_qwen2):
    tok = tiny_qwen2[1]  # Qwen2 splits every digit: label 10 is two tokens
    points = [[float(i)] for i in range(12)]
    with pytest.raises(A.LabelTokenError, match="one token"):
        A.encode_episode(tok, points, 12, list(range(12)))


# ---------------------------------------------------------------- layers

def test_layer_helpers(embedded):
    model = embedded[0]
    assert A.num_layers(model) == model.config.num_hidden_layers == 30
    assert A.middle_layer(32) == 15 and A.middle_layer(30) == 14
    assert A.relative_depth_layer(32) == 23 and A.relative_depth_layer(30) == 22
    assert A.resolve_layers("all", 4) == [0, 1, 2, 3]
    assert A.resolve_layers([-1, "middle", 0], 30) == [0, 14, 29]
    with pytest.raises(ValueError, match="out of range"):
        A.resolve_layers(30, 30)


# ---------------------------------------------------------------- recomputed attention == eager attention

@pytest.mark.parametrize("which", ["tiny_llama", "tiny_qwen2", "embedded"])
def test_hook_attention_equals_eager_output_attentions(which, request):
    model, tok = request.getfixturevalue(which)
    ep = _episodes()[1]
    enc = A.encode_episode(tok, ep.points, ep.n_clusters, ep.labels)
    eager = _eager_attentions(model, enc.input_ids)
    n = A.num_layers(model)
    for layer in sorted({0, n // 2, n - 1}):
        mine = A.layer_attention(model, enc.input_ids, layer)
        assert mine.shape == eager[layer].shape
        assert torch.allclose(mine, eager[layer], atol=2e-5), (which, layer, (mine - eager[layer]).abs().max())
    # the blocks from the hook path equal eqs. 2-3 computed with loops from the eager attention
    blocks = A.extract_attention_blocks(model, enc, layers="all", heads="all")
    assert blocks.layers == list(range(n)) and blocks.ii.shape[:2] == (n, model.config.num_attention_heads)
    for layer in sorted({0, n - 1}):
        ref = np.stack([A.aggregate_blocks_loop(h.numpy(), enc.point_of_token, enc.n_points, enc.label_positions)
                        for h in eager[layer]])
        np.testing.assert_allclose(blocks.block_matrix(layer), ref, atol=1e-5)
    mean = blocks.head_mean()
    np.testing.assert_allclose(mean.ii, blocks.ii.mean(axis=1), atol=1e-7)


def test_hook_attention_with_lora_adapter(tiny_llama):
    from peft import LoraConfig, get_peft_model

    model, tok = load_model_and_tokenizer(str(tiny_llama[0].name_or_path), dtype="float32")
    torch.manual_seed(0)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj"],
                                                  init_lora_weights=False)).eval()
    enc = A.encode_episode(tok, _episodes()[0].points, 2)
    eager = _eager_attentions(peft_model, enc.input_ids)
    assert torch.allclose(A.layer_attention(peft_model, enc.input_ids, 1), eager[1], atol=2e-5)


def test_extraction_stops_after_last_requested_layer(embedded):
    model, tok = embedded
    enc = A.encode_episode(tok, _episodes()[0].points, 2)
    seen = []
    handles = [layer.register_forward_pre_hook(lambda m, a, i=i: seen.append(i))
               for i, layer in enumerate(A.decoder_layers(model))]
    try:
        blocks = A.extract_attention_blocks(model, enc, layers=[3, 5])
    finally:
        for h in handles:
            h.remove()
    assert blocks.ii.shape == (2, 10, 10) and blocks.oi is None
    assert max(seen) == 5  # the forward pass did not go past layer 5


# ---------------------------------------------------------------- vectorised aggregation

def test_vectorised_aggregation_equals_loop_on_random_attention():
    rng = np.random.default_rng(0)
    T, m = 120, 9
    owner = np.full(T, -1)
    pos = 5
    for i in range(m):  # contiguous segments with gaps, sizes 2..7
        size = int(rng.integers(2, 8))
        owner[pos:pos + size] = i
        pos += size + int(rng.integers(0, 3))
    labels = np.arange(pos + 3, pos + 3 + 2 * m, 2)
    assert labels[-1] < T
    scores = rng.normal(size=(3, T, T))
    scores[:, np.triu(np.ones((T, T), bool), 1)] = -np.inf
    attn = torch.softmax(torch.tensor(scores), dim=-1)
    P = A.segment_matrix(owner, m, labels, T).double()
    fast = A.aggregate_blocks(attn, P).numpy()
    for h in range(3):
        np.testing.assert_allclose(fast[h], A.aggregate_blocks_loop(attn[h].numpy(), owner, m, labels), atol=1e-12)
    # only the needed query rows give the same result
    rows = np.flatnonzero(P.abs().sum(1).numpy() > 0)
    np.testing.assert_allclose(A.aggregate_blocks(attn[:, rows], P[rows], P).numpy(), fast, atol=1e-12)
    # the input-output block is zero by causality
    assert np.abs(fast[:, :m, m:]).max() == 0


# ---------------------------------------------------------------- Appendix B.2 preprocessing

def test_preprocessing_steps_on_a_hand_made_matrix():
    M = np.array([[1.0, 0, 0], [2, 2, 0], [1, 3, 4]])
    np.testing.assert_array_equal(A.drop_diagonal(M), [[0, 0, 0], [2, 0, 0], [1, 3, 0]])
    np.testing.assert_allclose(A.row_normalize(A.drop_diagonal(M)), [[0, 0, 0], [1, 0, 0], [0.25, 0.75, 0]])
    np.testing.assert_allclose(A.scale_rows_by_nonzero([[0, 0, 0], [1, 0, 0], [0.25, 0.75, 0]]),
                               [[0, 0, 0], [1, 0, 0], [0.5, 1.5, 0]])
    np.testing.assert_allclose(A.symmetrize([[0, 0, 0], [1, 0, 0], [0.5, 1.5, 0]]),
                               [[0, 0.5, 0.25], [0.5, 0, 0.75], [0.25, 0.75, 0]])
    steps = A.preprocessing_steps(M)
    assert list(steps) == ["A^II", "diagonal removed", "row-normalised", "x non-zeros per row", "symmetrised"]
    np.testing.assert_allclose(A.preprocess_affinity(M), [[0, 0.5, 0.25], [0.5, 0, 0.75], [0.25, 0.75, 0]])
    # keeping the diagonal: rows [1,0,0]/1*1, [.5,.5,0]*2, [1/8,3/8,1/2]*3
    np.testing.assert_allclose(A.preprocess_affinity(M, exclude_diagonal=False),
                               A.symmetrize([[1, 0, 0], [1, 1, 0], [3 / 8, 9 / 8, 12 / 8]]))
    assert list(A.preprocessing_steps(M, exclude_diagonal=False))[1] == "row-normalised"


def test_spectral_clustering_on_block_attention():
    rng = np.random.default_rng(1)
    y = np.array([0, 1, 1, 0, 0, 1, 0, 1, 1, 1, 0, 0])
    W = np.where(y[:, None] == y[None, :], 1.0, 0.05) * rng.uniform(0.8, 1.2, (12, 12))
    A_ii = np.tril(W)  # causal: lower triangle only
    labels = A.spectral_cluster_attention(A_ii, 2)
    assert clustering_accuracy(y, labels) == 1.0
    assert np.array_equal(labels, A.spectral_cluster_attention(A_ii, 2))  # deterministic (random_state=0)


# ---------------------------------------------------------------- aggregation fallback

def test_aggregation_without_contiguous_segments_uses_the_dense_product():
    """A segment whose tokens are not one contiguous run is still aggregated exactly (dense fallback)."""
    rng = np.random.default_rng(1)
    T, m = 30, 3
    owner = np.full(T, -1)
    owner[[2, 3, 5]] = 0  # not contiguous (row 4 belongs to point 1)
    owner[4] = 1
    owner[6:8] = 1
    owner[12:20] = 2
    P = A.segment_matrix(owner, m, None, T).double()
    assert A.segment_runs(P) is None
    assert A.segment_runs(A.segment_matrix(np.where(owner == 0, -1, owner), m, None, T)) is None  # empty segment
    scores = rng.normal(size=(2, T, T))
    scores[:, np.triu(np.ones((T, T), bool), 1)] = -np.inf
    attn = torch.softmax(torch.tensor(scores), dim=-1)
    fast = A.aggregate_blocks(attn, P).numpy()
    for h in range(2):
        np.testing.assert_allclose(fast[h], A.aggregate_blocks_loop(attn[h].numpy(), owner, m), atol=1e-12)


def test_sc_layer_scores_same_table_fresh_and_from_cache(tiny_llama, tmp_path):
    """A rerun served by the JSON Lines cache writes a byte-identical CSV (same columns, same order)."""
    model, tok = tiny_llama
    eps = _episodes()[:2]
    cache = tmp_path / "sc_cache.jsonl"
    fresh = A.sc_layer_scores(model, tok, eps, "tiny", cache_path=cache, desc="fresh")
    cached = A.sc_layer_scores(model, tok, eps, "tiny", cache_path=cache, desc="cached")
    assert list(fresh.columns)[-4:] == ["layer", "accuracy", "ari", "nmi"]
    assert fresh.to_csv(index=False) == cached.to_csv(index=False)


# ---------------------------------------------------------------- package layout

def test_attention_subpackage_has_no_import_cycle_and_short_modules():
    """Each module of icc_utils.attention imports its siblings only in one direction, and stays readable."""
    import ast
    from pathlib import Path

    folder = Path(A.__file__).parent
    deps = {}
    for path in folder.glob("*.py"):
        tree = ast.parse(path.read_text())
        deps[path.stem] = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 1 and n.module}
        assert len(path.read_text().splitlines()) <= 500, path.name
    assert set(deps) >= {"tokens", "aggregate", "extract", "spectral", "analysis"}

    def reach(mod, seen=()):
        for d in deps.get(mod, ()):
            assert d not in seen + (mod,), f"import cycle through {mod} -> {d}"
            reach(d, seen + (mod,))

    for mod in deps:
        reach(mod)
