"""The merges on tensors: groups of a unit set, and one layer's (or head's) rows merged group by
group. The rules and their exactness conditions are those of ``probes.measure.merge`` (module
docstring); each function here states its own. Everything is computed in float64 on CPU and
returned in the dtype and on the device of the input."""

from __future__ import annotations

import numpy as np
import torch

from probes.measure.metrics import Condensation


def group_labels_at(units, thresholds, zero_tol: float = 1e-8) -> dict[float, np.ndarray]:
    """Condensed groups of every unit at each threshold, as ``Condensation`` finds them (one fit).

    Args:
        units: (n, dim) array-like, one unit per row (input weights, bias appended).
        thresholds: cosine thresholds tau in (0, 1): every pair inside a group has cosine >= tau.
        zero_tol: units with norm < zero_tol * median norm are left out (label 0).

    Returns:
        {tau (float): (n,) int64 labels}: 0 for a left-out unit, group ids from 1 otherwise.

    Raises:
        ValueError: a tau outside (0, 1), or units not a finite 2-D array (``Condensation``).
    """
    u = np.asarray(units, dtype=np.float64)
    if u.ndim != 2:
        raise ValueError(f"units must be 2-D (n_units, dim), got shape {u.shape}")
    taus = tuple(float(t) for t in thresholds)
    norms = np.linalg.norm(u, axis=1)
    keep = (norms > 0) & (norms >= zero_tol * np.median(norms)) if len(u) else norms > 0
    fit = Condensation(taus, zero_tol=0.0).fit(u[keep])
    out = {}
    for tau in taus:
        labels = np.zeros(len(u), dtype=np.int64)
        if keep.any():
            labels[keep] = fit.labels_[tau]
        out[tau] = labels
    return out


def group_labels(units, tau: float, zero_tol: float = 1e-8) -> np.ndarray:
    """``group_labels_at`` at one threshold: (n,) int64 labels, 0 for a left-out unit.

    Raises:
        ValueError: tau outside (0, 1), or units not a finite 2-D array (``Condensation``).
    """
    return group_labels_at(units, (tau,), zero_tol)[float(tau)]


def augmented(w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """(n, d) rows with their (n,) biases appended as a last column (n, d + 1); float64 on CPU."""
    w = w.detach().double().cpu()
    return w if b is None else torch.cat([w, b.detach().double().cpu()[:, None]], dim=1)


def _groups(labels: np.ndarray, norms: torch.Tensor):
    """(representative, members) per group of >= 1 unit; representative = largest norm."""
    for g in np.unique(labels[labels > 0]):
        idx = torch.as_tensor(np.flatnonzero(labels == g))
        yield int(idx[torch.argmax(norms[idx])]), idx


def merge_neurons(w_in: torch.Tensor, b_in: torch.Tensor | None, w_out: torch.Tensor,
                  labels, homogeneous: bool) -> tuple[torch.Tensor, torch.Tensor | None,
                                                      torch.Tensor, np.ndarray]:
    """Merge an MLP layer's neurons group by group (module docstring: the neuron merges).

    Args:
        w_in: (m, d) input rows; b_in: (m,) biases or None; w_out: (out, m) output columns.
        labels: (m,) ints from ``group_labels``: 0 = zeroed, equal ids >= 1 = one group.
        homogeneous: True for a degree-1 homogeneous activation (ReLU): merged input row u (unit
            norm) and output column sum_k c_k a_k, exact for parallel rows; False: mean row and
            summed output columns (approximate).

    Returns:
        (w_in, b_in, w_out) merged, same shapes and dtypes as given (computed in float64), and
        the kept neurons' indices (sorted); singletons are returned unchanged.

    Raises:
        ValueError: shapes that do not fit (w_out columns, b_in or labels not of length m).
    """
    m = w_in.shape[0]
    labels = np.asarray(labels)
    if w_out.shape[1] != m or labels.shape != (m,) or (b_in is not None and b_in.shape != (m,)):
        raise ValueError(f"shapes do not fit: w_in {tuple(w_in.shape)}, w_out "
                         f"{tuple(w_out.shape)}, labels {labels.shape}, b_in "
                         f"{None if b_in is None else tuple(b_in.shape)}")
    v, a = augmented(w_in, b_in), w_out.detach().double().cpu()
    new_v, new_a = torch.zeros_like(v), torch.zeros_like(a)
    kept = []
    for r, idx in _groups(labels, v.norm(dim=1)):
        kept.append(r)
        if len(idx) == 1:
            new_v[r], new_a[:, r] = v[r], a[:, r]
        elif homogeneous:
            s = v[idx].sum(0)
            u = s / s.norm()  # the norm-weighted mean direction
            new_v[r], new_a[:, r] = u, a[:, idx] @ (v[idx] @ u)  # c_k = v_k . u
        else:
            new_v[r], new_a[:, r] = v[idx].mean(0), a[:, idx].sum(1)
    d = w_in.shape[1]
    out_b = None if b_in is None else new_v[:, d].to(b_in)
    return new_v[:, :d].to(w_in), out_b, new_a.to(w_out), np.sort(np.asarray(kept, dtype=np.int64))


def merge_query_rows(q_w: torch.Tensor, q_b: torch.Tensor | None, k_w: torch.Tensor,
                     k_b: torch.Tensor | None, labels) -> tuple[torch.Tensor, torch.Tensor | None,
                                                               torch.Tensor, torch.Tensor | None,
                                                               np.ndarray]:
    """Merge one head's query rows with their key rows (module docstring: exact for parallel rows
    with learned positions, not with RoPE).

    Args:
        q_w, k_w: (d_head, d) query and key rows of one head; q_b, k_b: (d_head,) or None.
        labels: (d_head,) ints from ``group_labels`` on the query rows (bias appended).

    Returns:
        (q_w, q_b, k_w, k_b) merged, same shapes and dtypes (computed in float64): group
        representative r gets query row u = sum q / |sum q| and key row sum_r (q_r . u) k_r, the
        other members zero; and the kept rows' indices (sorted).

    Raises:
        ValueError: query and key rows (or labels, biases) of different lengths.
    """
    n = q_w.shape[0]
    labels = np.asarray(labels)
    if k_w.shape[0] != n or labels.shape != (n,) or any(
            b is not None and b.shape != (n,) for b in (q_b, k_b)):
        raise ValueError(f"shapes do not fit: q {tuple(q_w.shape)}, k {tuple(k_w.shape)}, "
                         f"labels {labels.shape}")
    q, k = augmented(q_w, q_b), augmented(k_w, k_b)
    new_q, new_k = torch.zeros_like(q), torch.zeros_like(k)
    kept = []
    for r, idx in _groups(labels, q.norm(dim=1)):
        kept.append(r)
        if len(idx) == 1:
            new_q[r], new_k[r] = q[r], k[r]
            continue
        s = q[idx].sum(0)
        u = s / s.norm()
        new_q[r], new_k[r] = u, (q[idx] @ u) @ k[idx]
    d = q_w.shape[1]
    qb = None if q_b is None else new_q[:, d].to(q_b)
    kb = None if k_b is None else new_k[:, d].to(k_b)
    return (new_q[:, :d].to(q_w), qb, new_k[:, :d].to(k_w), kb,
            np.sort(np.asarray(kept, dtype=np.int64)))


def merge_gated(gate: torch.Tensor, up: torch.Tensor, w_out: torch.Tensor,
                labels) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray]:
    """Merge a gated MLP's neurons group by group: out = sum_k a_k act(g_k . x) (h_k . x).

    Args:
        gate, up: (m, d) gate rows g_k and up rows h_k; w_out: (out, m) output columns a_k.
        labels: (m,) ints: 0 = zeroed, equal ids >= 1 = one group (``merge.site_labels``: gate
            and up groups intersected).

    Returns:
        (gate, up, w_out) merged, same shapes and dtypes: the representative gets gate row
        mean_k g_k, up row u = sum_k h_k / |sum_k h_k| and output column sum_k (h_k . u) a_k, the
        other members zero (EXACT when the group's gate rows are equal and its up rows parallel;
        otherwise approximate); and the kept neurons' indices (sorted).

    Raises:
        ValueError: shapes that do not fit.
    """
    m = gate.shape[0]
    labels = np.asarray(labels)
    if up.shape != gate.shape or w_out.shape[1] != m or labels.shape != (m,):
        raise ValueError(f"shapes do not fit: gate {tuple(gate.shape)}, up {tuple(up.shape)}, "
                         f"w_out {tuple(w_out.shape)}, labels {labels.shape}")
    g, h, a = (t.detach().double().cpu() for t in (gate, up, w_out))
    new_g, new_h, new_a = torch.zeros_like(g), torch.zeros_like(h), torch.zeros_like(a)
    kept = []
    for r, idx in _groups(labels, h.norm(dim=1) * g.norm(dim=1)):
        kept.append(r)
        if len(idx) == 1:
            new_g[r], new_h[r], new_a[:, r] = g[r], h[r], a[:, r]
            continue
        s = h[idx].sum(0)
        u = s / s.norm()
        new_g[r], new_h[r], new_a[:, r] = g[idx].mean(0), u, a[:, idx] @ (h[idx] @ u)
    return (new_g.to(gate), new_h.to(up), new_a.to(w_out),
            np.sort(np.asarray(kept, dtype=np.int64)))


def merge_query_rows_shared(q_w: torch.Tensor, q_b: torch.Tensor | None, k_w: torch.Tensor,
                            k_b: torch.Tensor | None, labels):
    """Merge the query rows of the G query heads that share one key head (grouped-query
    attention), with the shared key rows (``probes.measure.merge`` docstring).

    Args:
        q_w: (G, d_head, d) query rows of the G heads; q_b: (G, d_head) or None.
        k_w: (d_head, d) the shared key rows; k_b: (d_head,) or None.
        labels: (d_head,) ints: rows in one group in every one of the G heads share an id >= 1;
            0 = zeroed (query row ~0 in all G heads).

    Returns:
        (q_w, q_b, k_w, k_b) merged, same shapes and dtypes: per group, u_h = the mean direction
        of head h's rows, C[h, r] = q^h_r . u_h ~ s a b^T (its best rank-1 approximation); the
        representative gets query rows s a_h u_h and key row sum_r b_r k_r, the other members
        zero. EXACT when each head's rows of the group are parallel and C has rank 1 (always for
        G = 1), with learned positions; not with RoPE. Also the kept rows' indices (sorted).

    Raises:
        ValueError: shapes that do not fit.
    """
    n_heads, n, d = q_w.shape
    labels = np.asarray(labels)
    if (k_w.shape != (n, d) or labels.shape != (n,) or (q_b is not None and q_b.shape != (n_heads, n))
            or (k_b is not None and k_b.shape != (n,))):
        raise ValueError(f"shapes do not fit: q {tuple(q_w.shape)}, k {tuple(k_w.shape)}, "
                         f"labels {labels.shape}")
    q = torch.stack([augmented(q_w[h], None if q_b is None else q_b[h]) for h in range(n_heads)])
    k = augmented(k_w, k_b)
    new_q, new_k = torch.zeros_like(q), torch.zeros_like(k)
    kept = []
    for r, idx in _groups(labels, q.norm(dim=2).norm(dim=0)):
        kept.append(r)
        if len(idx) == 1:
            new_q[:, r], new_k[r] = q[:, r], k[r]
            continue
        s = q[:, idx].sum(1)  # (G, d + 1)
        norm = s.norm(dim=1, keepdim=True)
        u = torch.where(norm > 0, s / norm.clamp_min(1e-300), torch.zeros_like(s))
        c = torch.einsum("grd,gd->gr", q[:, idx], u)  # (G, |group|)
        left, sv, right = torch.linalg.svd(c, full_matrices=False)
        a, b = left[:, 0], right[0]
        if b.sum() < 0:
            a, b = -a, -b
        new_q[:, r], new_k[r] = (sv[0] * a)[:, None] * u, b @ k[idx]
    qb = None if q_b is None else new_q[:, :, d].to(q_b)
    kb = None if k_b is None else new_k[:, d].to(k_b)
    return (new_q[:, :, :d].to(q_w), qb, new_k[:, :d].to(k_w), kb,
            np.sort(np.asarray(kept, dtype=np.int64)))
