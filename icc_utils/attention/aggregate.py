"""Token-level attention reduced to data-level blocks (eqs. 2-3).

With ``P = [S D^-1 | L]`` (``S``: token-by-point indicator, ``D``: tokens per point, ``L``:
one-hot label tokens), ``P^T A P`` holds ``A^II`` (eq. 2) top-left, ``A^OI`` bottom-left and
``A^OO`` bottom-right (eq. 3) in one product. Because every segment is a contiguous run of
tokens, the product is evaluated as run sums. :func:`aggregate_blocks_loop` is the per-pair
reference the tests and the benchmark compare against.
"""
from __future__ import annotations

import numpy as np

__all__ = ["segment_matrix", "segment_runs", "aggregate_blocks", "aggregate_blocks_loop"]


def segment_matrix(point_of_token: np.ndarray, n_points: int, label_positions: np.ndarray | None = None,
                   n_tokens: int | None = None):
    """``P = [S D^-1 | L]`` (T x m or T x 2m, float32 torch tensor): column ``i`` averages the tokens of
    point ``i``; column ``m + i`` picks label ``i``'s token."""
    import torch

    owner = np.asarray(point_of_token)
    T = int(n_tokens if n_tokens is not None else len(owner))
    k = n_points * (2 if label_positions is not None else 1)
    P = torch.zeros((T, k), dtype=torch.float32)
    idx = np.flatnonzero(owner >= 0)
    sizes = np.bincount(owner[idx], minlength=n_points).astype(np.float32)
    P[torch.as_tensor(idx), torch.as_tensor(owner[idx])] = torch.as_tensor(1.0 / sizes[owner[idx]])
    if label_positions is not None:
        P[torch.as_tensor(np.asarray(label_positions)), torch.arange(n_points) + n_points] = 1.0
    return P


def segment_runs(P):
    """The segments of a segment matrix ``P`` (``(T, K)``) as contiguous row runs.

    Returns ``(starts, ends, weights)`` (each of length ``K``; column ``k`` is rows
    ``starts[k]:ends[k]``, all equal to ``weights[k]``), or ``None`` if some column's non-zeros are
    not one contiguous run of equal values (then only the dense product applies).
    """
    import torch

    Pn = P.detach().cpu().float().numpy() if P.dtype == torch.bfloat16 else P.detach().cpu().numpy()
    nz = Pn != 0
    counts = nz.sum(axis=0)
    if (counts == 0).any():
        return None
    starts = nz.argmax(axis=0)
    ends = starts + counts
    cols = np.arange(Pn.shape[1])
    weights = Pn[starts, cols]
    last = Pn.shape[0] - 1 - nz[::-1].argmax(axis=0)
    if not (last == ends - 1).all() or not ((Pn == weights) | ~nz).all():
        return None
    return torch.as_tensor(starts), torch.as_tensor(ends), torch.as_tensor(weights)


def _run_sums(x, starts, ends, dim: int):
    """Sums of ``x`` over the index runs ``starts[k]:ends[k]`` along ``dim`` (runs do not overlap).

    On the CPU, along the last axis: one ``numpy.add.reduceat`` over the run boundaries; along any
    other axis: one vectorised sum of whole slabs per run (K sums, each over all the other axes at
    once; single-index runs are one gather) instead of ``reduceat``, which is slower there.
    On an accelerator: one cumulative sum in float64 (differences of it are exact to ~1e-16 for
    attention probabilities) and two gathers.
    """
    import torch

    if x.device.type == "cpu":
        arr = x.detach()
        arr = (arr if arr.dtype in (torch.float32, torch.float64) else arr.float()).numpy()
        s, e = starts.cpu().numpy(), ends.cpu().numpy()
        axis = dim % arr.ndim
        if axis != arr.ndim - 1:
            shape = list(arr.shape)
            shape[axis] = len(s)
            out = np.empty(shape, dtype=arr.dtype)
            moved, target = np.moveaxis(arr, axis, 0), np.moveaxis(out, axis, 0)  # views
            single = e - s == 1
            target[single] = moved[s[single]]
            for k in np.flatnonzero(~single):
                np.sum(moved[s[k]:e[k]], axis=0, out=target[k])
            return torch.from_numpy(out)
        bounds = np.unique(np.concatenate([s, e]))
        bounds = bounds[bounds < arr.shape[dim]]
        sums = np.add.reduceat(arr, bounds, axis=dim)
        return torch.from_numpy(np.take(sums, np.searchsorted(bounds, s), axis=dim))
    c = torch.cumsum(x.to(torch.float64), dim=dim)
    c = torch.cat([torch.zeros_like(c.narrow(dim, 0, 1)), c], dim=dim)
    return c.index_select(dim, ends) - c.index_select(dim, starts)


def aggregate_blocks(attn, P_rows, P_cols=None):
    """Data-level blocks ``P_rows^T A P_cols`` for every head at once.

    ``attn``: ``(..., R, T)`` attention probabilities (rows may be a subset of the query tokens,
    matching ``P_rows``' rows); ``P_rows``: ``(R, K)``; ``P_cols``: ``(T, K)`` (defaults to ``P_rows``).
    Returns ``(..., K, K)`` in ``attn``'s dtype.

    The segment matrices define the product; because every segment (a point's tokens, a label's
    token) is a contiguous run of tokens, the product is evaluated as run sums along each axis
    (whole tensors at once, no loop over pairs), which needs ``O(R*T)`` work instead of ``O(R*T*K)``. Segment matrices that are not contiguous runs fall back to the dense
    matrix product.
    """
    import torch

    P_cols = P_rows if P_cols is None else P_cols
    runs_r = segment_runs(P_rows)
    runs_c = runs_r if P_cols is P_rows else segment_runs(P_cols)
    if runs_r is None or runs_c is None:
        return P_rows.transpose(0, 1).to(attn.dtype) @ attn @ P_cols.to(attn.dtype)
    (r0, r1, wr), (c0, c1, wc) = runs_r, runs_c
    # rows first: (..., R, T) -> (..., K, T) touches every row once; then the small (..., K, T) along columns
    sums = _run_sums(_run_sums(attn, r0, r1, dim=-2), c0, c1, dim=-1).to(attn.device)  # (..., K, K)
    scale = wr.to(sums.dtype).unsqueeze(1) * wc.to(sums.dtype).unsqueeze(0)
    return (sums * scale.to(sums.device)).to(attn.dtype)


def aggregate_blocks_loop(attn: np.ndarray, point_of_token: np.ndarray, n_points: int,
                          label_positions: np.ndarray | None = None) -> np.ndarray:
    """Reference implementation of eqs. 2-3 with explicit loops over point pairs (for tests and
    the benchmark). ``attn``: ``(T, T)``; returns ``(K, K)`` like :func:`aggregate_blocks`."""
    attn = np.asarray(attn)
    segs = [np.flatnonzero(point_of_token == i) for i in range(n_points)]
    K = n_points * (2 if label_positions is not None else 1)
    out = np.zeros((K, K), dtype=np.float64)
    for i in range(n_points):
        for j in range(n_points):
            out[i, j] = attn[np.ix_(segs[i], segs[j])].mean()
    if label_positions is not None:
        for i in range(n_points):
            for j in range(n_points):
                out[n_points + i, j] = attn[label_positions[i], segs[j]].mean()
                out[i, n_points + j] = attn[segs[i], label_positions[j]].mean()
                out[n_points + i, n_points + j] = attn[label_positions[i], label_positions[j]]
    return out
