"""Merge each condensed group into one unit: what condensation buys.

The embedding principle (Zhang, Zhang, Luo, Xu, "Embedding principle of loss landscape of deep
neural networks", NeurIPS 2021, arXiv 2105.14573) says that a wide network whose neurons have
split into groups of one input direction computes what a narrower network (one neuron per group)
computes; the condensation papers (Xu, Zhang, Zhou, arXiv 2504.09484; Zhang et al., NeurIPS 2024,
arXiv 2405.05409 for the rows of W_Q) find such groups. Merging the groups that
``metrics.Condensation`` finds at a threshold tau and measuring the merged network checks that
the groups are functionally one unit. The sites (which layers, as views into the parameters) are
``probes.measure.arch.merge_sites``, one architecture file each.

The merges (v_k: neuron k's input row with its bias appended, as the units of ``units.py``;
x~ = (x, 1); groups from complete linkage on cosine cut at tau, as ``Condensation``):
- Degree-1 homogeneous activations (ReLU: relu(c z) = c relu(z) for c >= 0): neurons
  v_k = c_k u (c_k > 0) of one group give sum_k a_k relu(v_k . x~) = (sum_k c_k a_k) relu(u . x~),
  so they merge EXACTLY into one neuron with input row u and output column sum_k c_k a_k
  (a_k: output columns). When the directions are only near-equal, u is the group's norm-weighted
  mean direction sum_k v_k / |sum_k v_k| and c_k = v_k . u (= |v_k| when exact): measured, not exact.
- Other activations (GELU, tanh, SiLU, sigmoid, softplus): the group's mean row and the summed
  output columns, sigma(mean_k v_k . x~) sum_k a_k: exact only when the rows are equal (not just
  parallel), otherwise approximate, measured.
- Gated MLPs (Llama family: out = sum_k a_k silu(g_k . x) (h_k . x), gate row g_k, up row h_k):
  a group is a set of neurons whose gate rows AND up rows are each in one group at tau (the
  intersection of the two partitions). Its merged neuron has gate row mean_k g_k, up row
  u = sum_k h_k / |sum_k h_k| and output column sum_k (h_k . u) a_k: EXACT when the gate rows are
  equal and the up rows parallel (the up projection is linear, so only the gate needs equality);
  otherwise approximate, measured. A neuron whose gate or up row is ~0 is zeroed (exact when
  exactly 0: silu(0) = 0).
- Attention query rows: a head's scores are sum_r (q_r . x~_i)(k_r . x~_j) (q_r, k_r: rows of W_Q,
  W_K with their biases). Query rows q_r = c_r u of one group merge EXACTLY into one query row u
  and one key row sum_r c_r k_r; the head's d_k falls to its number of groups. Groups never cross
  heads (each head has its own softmax). The scale 1 / sqrt(d_head) stays, since rows are zeroed,
  not removed. This holds with learned (added) positions, as in GPT-2 and the paper's model.
- Grouped-query attention (n_kv_head < n_head): a key row serves the G = n_head / n_kv_head query
  heads that read its key head, so merging it for one query head changes it for the others. A
  group is therefore a set of rows r that fall in one group in EVERY query head of the key head
  (intersection of the G partitions); with u_h the group's mean direction in head h and
  C[h, r] = q^h_r . u_h, the best rank-1 C ~ s a b^T gives query rows s a_h u_h and one shared
  key row sum_r b_r k_r. EXACT when each head's rows are parallel and C has rank 1 (the heads'
  coefficient vectors are proportional; always true for G = 1, where this is the merge above);
  otherwise measured. A row is zeroed only when its query row is ~0 in all G heads.
- RoPE (Llama family): the rows (i, i + d_head / 2) of q and k are rotated together by the angle
  theta_i (n - m) of the query-key distance, a different frequency theta_i per pair. The score is
  sum_i (Q_i x_m)^T R(theta_i (n - m)) (K_i x_n) over 2-row blocks, so a row merge that moves key
  row k_r into the slot of another row (another pair, another frequency) is NOT exact, and no
  pair-level merge is either: within a pair the rotation mixes both rows, and no two pairs of a
  head share a frequency. Merges there are approximate (near-exact only for low-frequency pairs
  at short distances, where R ~ I); they are done as above and measured. GPT-NeoX rotates only
  the first rotary_pct * d_head rows of each head: a group among its other rows merges exactly.
- The merged model is a copy of the model with the same architecture: each group's first member
  (the one of largest norm) holds the merged unit and the other members are zeroed (input row,
  bias and output column; query and key rows). Units of norm below ``zero_tol`` times the layer's
  median (``Condensation``'s dropped units) are zeroed too: exact for ReLU and attention when they
  are exactly zero, a constant shift for activations with sigma(0) != 0 (sigmoid, softplus).
  Its effective width is the number of units left. Singletons are left exactly as they were, so
  a layer with no group of two merges to the same function.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from probes.measure.arch import (
    AttnSite,
    GatedMlpSite,
    MlpSite,
    Site,
    UnsupportedModel,
    fold_norm_gains,
    merge_sites,
)
from probes.measure.merge_rows import (
    augmented,
    group_labels,
    group_labels_at,
    merge_gated,
    merge_neurons,
    merge_query_rows,
    merge_query_rows_shared,
)

__all__ = ["UnsupportedModel", "AttnSite", "GatedMlpSite", "MlpSite", "Site", "merge_sites",
           "fold_norm_gains", "group_labels", "group_labels_at", "merge_neurons", "merge_gated",
           "merge_query_rows", "merge_query_rows_shared", "site_labels", "merge_site",
           "merged_in_place", "merge_model", "Merged"]

HOMOGENEOUS = ("relu",)  # degree-1 positively homogeneous: the neuron merge is exact
MERGE_COMPONENTS = ("mlp.in", "mlp.gate_up", "attn.q")  # what ``merge_model`` merges


def _combine(labels: list[np.ndarray], zero_when_any: bool) -> np.ndarray:
    """One partition from several of the same units: units share a group iff they share one in
    every partition. A unit labelled 0 in any (``zero_when_any``) or in all partitions gets 0; one
    labelled 0 in only some of them is a singleton."""
    stack = np.stack(labels, axis=1)
    zero = (stack == 0).any(1) if zero_when_any else (stack == 0).all(1)
    out, ids = np.zeros(len(stack), dtype=np.int64), {}
    for i, row in enumerate(map(tuple, stack)):
        if not zero[i]:
            out[i] = ids.setdefault(row if 0 not in row else ("single", i), len(ids) + 1)
    return out


def _heads(site: AttnSite, j: int) -> slice:
    """The query heads that read key head j."""
    per_kv = site.n_head // site.n_kv_head
    return slice(j * per_kv, (j + 1) * per_kv)


def site_labels(site: Site, thresholds, zero_tol: float = 1e-8) -> dict:
    """The groups that ``merge_site`` merges, at every threshold (one ``Condensation`` fit per
    unit set): computing them once lets a caller merge one site at several thresholds.

    Args:
        site: from ``merge_sites``; thresholds: cosine thresholds tau in (0, 1).
        zero_tol: units with norm < zero_tol * the set's median norm are zeroed (label 0).

    Returns:
        {tau: labels}: for an MLP site (m,) int64 (gated: gate and up groups intersected, 0 where
        either row is ~0); for attention a list over key heads of (d_head,) int64 (the groups of
        the query heads that read that key head, intersected; 0 where all are ~0).

    Raises:
        ValueError: a tau outside (0, 1); weights with NaN or inf.
    """
    taus = [float(t) for t in thresholds]
    if isinstance(site, MlpSite):
        return group_labels_at(augmented(site.w_in, site.b_in), taus, zero_tol)
    if isinstance(site, GatedMlpSite):
        gate = group_labels_at(augmented(site.gate, None), taus, zero_tol)
        up = group_labels_at(augmented(site.up, None), taus, zero_tol)
        return {t: _combine([gate[t], up[t]], zero_when_any=True) for t in taus}
    q_w, q_b, _, _ = site.per_head()
    out = {t: [] for t in taus}
    for j in range(site.n_kv_head):
        heads = range(site.n_head)[_heads(site, j)]
        per_head = [group_labels_at(augmented(q_w[h], None if q_b is None else q_b[h]), taus,
                                    zero_tol) for h in heads]
        for t in taus:
            out[t].append(_combine([p[t] for p in per_head], zero_when_any=False))
    return out


@torch.no_grad()
def merge_site(site: Site, tau: float, labels=None, zero_tol: float = 1e-8) -> dict:
    """Merge one site in place (its tensors are views of a model's parameters); exactness as in
    the module docstring (MLP: ``merge_neurons`` / ``merge_gated``; attention:
    ``merge_query_rows`` per head, ``merge_query_rows_shared`` per key head under GQA).

    Args:
        site: from ``merge_sites``; tau: cosine threshold in (0, 1).
        labels: the site's labels at tau (``site_labels(site, [tau])[tau]``), or None to compute.
        zero_tol: as ``site_labels``.

    Returns:
        {"layer", "component", "n_units", "merged_width"}: neurons for an MLP; for attention the
        query rows before and left over all query heads (the sum of the heads' d_k).

    Raises:
        ValueError: tau outside (0, 1), or labels of the wrong shape.
    """
    labels = site_labels(site, [tau], zero_tol)[float(tau)] if labels is None else labels
    if isinstance(site, MlpSite):
        w_in, b_in, w_out, kept = merge_neurons(site.w_in, site.b_in, site.w_out, labels,
                                                site.activation in HOMOGENEOUS)
        for view, new in ((site.w_in, w_in), (site.w_out, w_out), (site.b_in, b_in)):
            if view is not None:
                view.copy_(new)
        return dict(layer=site.layer, component=site.component, n_units=len(labels),
                    merged_width=len(kept))
    if isinstance(site, GatedMlpSite):
        *new, kept = merge_gated(site.gate, site.up, site.w_out, labels)
        for view, value in zip(site.tensors(), new):
            view.copy_(value)
        return dict(layer=site.layer, component=site.component, n_units=len(labels),
                    merged_width=len(kept))
    q_w, q_b, k_w, k_b = site.per_head()  # views: writing into them writes the model
    left = 0
    for j in range(site.n_kv_head):
        heads = _heads(site, j)
        qb = None if q_b is None else q_b[heads]
        kb = None if k_b is None else k_b[j]
        if heads.stop - heads.start == 1:
            nq, nqb, nk, nkb, kept = merge_query_rows(q_w[heads.start], None if qb is None else qb[0],
                                                      k_w[j], kb, labels[j])
            nq, nqb = nq[None], None if nqb is None else nqb[None]
        else:
            nq, nqb, nk, nkb, kept = merge_query_rows_shared(q_w[heads], qb, k_w[j], kb, labels[j])
        q_w[heads], k_w[j] = nq, nk
        if qb is not None:
            q_b[heads] = nqb
        if kb is not None:
            k_b[j] = nkb
        left += len(nq) * len(kept)
    return dict(layer=site.layer, component=site.component, n_units=q_w.shape[0] * q_w.shape[1],
                merged_width=left)


@contextmanager
def merged_in_place(sites: list[Site], tau: float, labels: list[dict] | None = None,
                    zero_tol: float = 1e-8):
    """Merge ``sites`` in place for the ``with`` block, then restore them bit for bit (their
    tensors are saved first: memory of the merged sites' weights).

    Args:
        sites: from ``merge_sites`` of the live model; tau: cosine threshold in (0, 1).
        labels: per site, its ``site_labels`` dict (holding tau), or None to compute them.

    Yields:
        the ``merge_site`` widths, one dict per site.

    Raises:
        ValueError: tau outside (0, 1); KeyError: labels without tau.
    """
    saved = [[t.clone() for t in s.tensors()] for s in sites]
    try:
        yield [merge_site(s, tau, None if labels is None else labels[i][float(tau)], zero_tol)
               for i, s in enumerate(sites)]
    finally:
        with torch.no_grad():
            for s, values in zip(sites, saved):
                for view, value in zip(s.tensors(), values):
                    view.copy_(value)


@dataclass
class Merged:
    """A merged copy of a model and its widths: ``widths`` has one dict per merged layer with
    layer, component (``mlp.in`` | ``mlp.gate_up`` | ``attn.q``), n_units (before) and
    merged_width (units left; for attention the query rows left over all heads, i.e. the sum of
    the heads' d_k); folded: whether norm gains were folded into the rows first (what was done:
    ``fold`` asked for, and the architecture has pre-norms to fold)."""

    model: torch.nn.Module
    widths: list[dict]
    folded: bool = False


def merge_model(model, tau: float, only: tuple[int, str] | None = None,
                zero_tol: float = 1e-8, fold: bool = False) -> Merged:
    """A copy of ``model`` with the condensed groups of its layers merged at threshold ``tau``.

    Args:
        model: a model ``merge_sites`` reads (left unchanged; the copy is on the same device).
        tau: cosine threshold in (0, 1) of the groups.
        only: (layer, component) to merge one site (component in ``MERGE_COMPONENTS``);
            None merges every site at once.
        zero_tol: units with norm < zero_tol * the layer's median norm are zeroed.
        fold: fold the norm gains into the rows first (``fold_norm_gains``), so that groups are
            those of the folded rows.

    Returns:
        ``Merged`` (the copy, and the widths of the merged sites).

    Raises:
        UnsupportedModel: no merge for the model type; ValueError: tau outside (0, 1), or
        ``only`` names no site of the model.
    """
    merged = copy.deepcopy(model)
    folded = bool(fold and fold_norm_gains(merged))
    sites = merge_sites(merged)
    if only is not None:
        sites = [s for s in sites if (s.layer, s.component) == tuple(only)]
        if not sites:
            raise ValueError(f"only={only!r} names no merge site: accepted are (layer, component) "
                             f"with component in {MERGE_COMPONENTS}")
    return Merged(merged, [merge_site(s, tau, zero_tol=zero_tol) for s in sites], folded)
