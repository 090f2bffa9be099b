"""Merge each condensed group into one unit: what condensation buys.

The embedding principle (Zhang, Zhang, Luo, Xu, "Embedding principle of loss landscape of deep
neural networks", NeurIPS 2021, arXiv 2105.14573) says that a wide network whose neurons have
split into groups of one input direction computes what a narrower network (one neuron per group)
computes; the condensation papers (Xu, Zhang, Zhou, arXiv 2504.09484; Zhang et al., NeurIPS 2024,
arXiv 2405.05409 for the rows of W_Q) find such groups. Merging the groups that
``metrics.Condensation`` finds at a threshold tau and measuring the merged network checks that
the groups are functionally one unit.

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
- Attention query rows: a head's scores are sum_r (q_r . x~_i)(k_r . x~_j) (q_r, k_r: rows of W_Q,
  W_K with their biases). Query rows q_r = c_r u of one group merge EXACTLY into one query row u
  and one key row sum_r c_r k_r; the head's d_k falls to its number of groups. Groups never cross
  heads (each head has its own softmax). The scale 1 / sqrt(d_head) stays, since rows are zeroed,
  not removed. This holds with learned (added) positions, as in GPT-2 and the paper's model; with
  RoPE the rotation applied to row pair (2i, 2i + 1) differs per pair, so q_r . R x differs per
  row and parallel rows no longer share one scalar: there it would not be exact (no reader here).
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
from dataclasses import dataclass

import numpy as np
import torch

from probes.measure.architectures import UnsupportedModel
from probes.measure.metrics import Condensation

HOMOGENEOUS = ("relu",)  # degree-1 positively homogeneous: the neuron merge is exact
MERGE_COMPONENTS = ("mlp.in", "attn.q")  # what ``merge_model`` merges: MLP neurons, query rows


@dataclass
class MlpSite:
    """One MLP layer of a model, as views into its parameters in (d_out, d_in) orientation:
    ``w_in`` (m, d), ``b_in`` (m,) or None, ``w_out`` (out, m); ``activation`` by name."""

    layer: int
    w_in: torch.Tensor
    b_in: torch.Tensor | None
    w_out: torch.Tensor
    activation: str
    component: str = "mlp.in"


@dataclass
class AttnSite:
    """One attention layer: query and key rows (views, (n_head * d_head, d)), their biases (or
    None) and the number of heads (rows split into consecutive chunks of d_head)."""

    layer: int
    q_w: torch.Tensor
    q_b: torch.Tensor | None
    k_w: torch.Tensor
    k_b: torch.Tensor | None
    n_head: int
    component: str = "attn.q"


def merge_sites(model) -> list[MlpSite | AttnSite]:
    """The layers ``merge_model`` can merge, in layer order (attention before MLP per layer).

    Args:
        model: a live model of type ``condensation_mlp`` (the two-layer net: one MLP site, layer
            0), ``condensation_paper_gpt`` (the paper's model) or ``gpt2`` (Conv1D weights are
            read transposed; c_attn split into q | k | v).

    Returns:
        sites whose tensors are views of the model's parameters (editing them edits the model).

    Raises:
        UnsupportedModel (a ValueError): any other model type (e.g. RoPE models, see the module
            docstring; ResNet).
    """
    c = getattr(model, "config", None)
    kind = getattr(c, "model_type", None)
    if kind == "condensation_mlp":
        return [MlpSite(0, model.hidden.weight.data, model.hidden.bias.data,
                        model.output.weight.data, c.activation)]
    sites: list[MlpSite | AttnSite] = []
    if kind == "condensation_paper_gpt":
        for i, b in enumerate(model.h):
            a = b.attn
            sites += [AttnSite(i, a.q_proj.weight.data, None, a.k_proj.weight.data, None, c.n_head),
                      MlpSite(i, b.mlp.fc_in.weight.data, None, b.mlp.fc_out.weight.data, "relu")]
        return sites
    if kind == "gpt2":
        e = c.n_embd
        for i, b in enumerate(model.transformer.h):
            w, bias = b.attn.c_attn.weight.data, b.attn.c_attn.bias.data  # (e, 3e), (3e,)
            sites += [AttnSite(i, w[:, :e].T, bias[:e], w[:, e:2 * e].T, bias[e:2 * e], c.n_head),
                      MlpSite(i, b.mlp.c_fc.weight.data.T, b.mlp.c_fc.bias.data,
                              b.mlp.c_proj.weight.data.T, c.activation_function)]
        return sites
    raise UnsupportedModel(f"model_type={kind!r} has no merge: accepted are condensation_mlp, "
                           f"condensation_paper_gpt and gpt2")


def group_labels(units, tau: float, zero_tol: float = 1e-8) -> np.ndarray:
    """Condensed groups of every unit at threshold ``tau``, as ``Condensation`` finds them.

    Args:
        units: (n, dim) array-like, one unit per row (input weights, bias appended).
        tau: cosine threshold in (0, 1): every pair inside a group has cosine >= tau.
        zero_tol: units with norm < zero_tol * median norm are left out (label 0).

    Returns:
        (n,) int64 labels: 0 for a left-out unit, group ids from 1 otherwise.

    Raises:
        ValueError: tau outside (0, 1), or units not a finite 2-D array (``Condensation``).
    """
    u = np.asarray(units, dtype=np.float64)
    if u.ndim != 2:
        raise ValueError(f"units must be 2-D (n_units, dim), got shape {u.shape}")
    norms = np.linalg.norm(u, axis=1)
    keep = (norms > 0) & (norms >= zero_tol * np.median(norms)) if len(u) else norms > 0
    labels = np.zeros(len(u), dtype=np.int64)
    fit = Condensation((tau,), zero_tol=0.0).fit(u[keep])
    labels[keep] = fit.labels_[float(tau)]
    return labels


def _augmented(w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
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
    v, a = _augmented(w_in, b_in), w_out.detach().double().cpu()
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
    q, k = _augmented(q_w, q_b), _augmented(k_w, k_b)
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


@dataclass
class Merged:
    """A merged copy of a model and its widths: ``widths`` has one dict per merged layer with
    layer, component (``mlp.in`` | ``attn.q``), n_units (before) and merged_width (units left;
    for attention the query rows left over all heads, i.e. the sum of the heads' d_k)."""

    model: torch.nn.Module
    widths: list[dict]


@torch.no_grad()
def merge_site(site: MlpSite | AttnSite, tau: float, zero_tol: float = 1e-8) -> dict:
    """Merge one site in place (its tensors are views of a model's parameters).

    Returns:
        {"layer", "component", "n_units", "merged_width"}.

    Raises:
        ValueError: tau outside (0, 1).
    """
    if isinstance(site, MlpSite):
        labels = group_labels(_augmented(site.w_in, site.b_in), tau, zero_tol)
        w_in, b_in, w_out, kept = merge_neurons(site.w_in, site.b_in, site.w_out, labels,
                                                site.activation in HOMOGENEOUS)
        site.w_in.copy_(w_in)
        site.w_out.copy_(w_out)
        if site.b_in is not None:
            site.b_in.copy_(b_in)
        return dict(layer=site.layer, component=site.component, n_units=len(labels),
                    merged_width=len(kept))
    n_rows, left = site.q_w.shape[0], 0
    d_head = n_rows // site.n_head
    for h in range(site.n_head):
        rows = slice(h * d_head, (h + 1) * d_head)
        qb = None if site.q_b is None else site.q_b[rows]
        kb = None if site.k_b is None else site.k_b[rows]
        labels = group_labels(_augmented(site.q_w[rows], qb), tau, zero_tol)
        q_w, q_b, k_w, k_b, kept = merge_query_rows(site.q_w[rows], qb, site.k_w[rows], kb, labels)
        site.q_w[rows] = q_w
        site.k_w[rows] = k_w
        if qb is not None:
            qb.copy_(q_b)
        if kb is not None:
            kb.copy_(k_b)
        left += len(kept)
    return dict(layer=site.layer, component=site.component, n_units=n_rows, merged_width=left)


def merge_model(model, tau: float, only: tuple[int, str] | None = None,
                zero_tol: float = 1e-8) -> Merged:
    """A copy of ``model`` with the condensed groups of its layers merged at threshold ``tau``.

    Args:
        model: a model ``merge_sites`` reads (left unchanged; the copy is on the same device).
        tau: cosine threshold in (0, 1) of the groups.
        only: (layer, component) to merge one site (component ``mlp.in`` or ``attn.q``);
            None merges every site at once.
        zero_tol: units with norm < zero_tol * the layer's median norm are zeroed.

    Returns:
        ``Merged`` (the copy, and the widths of the merged sites).

    Raises:
        UnsupportedModel: no merge for the model type; ValueError: tau outside (0, 1), or
        ``only`` names no site of the model.
    """
    merged = copy.deepcopy(model)
    sites = merge_sites(merged)
    if only is not None:
        sites = [s for s in sites if (s.layer, s.component) == tuple(only)]
        if not sites:
            raise ValueError(f"only={only!r} names no merge site: accepted are (layer, component) "
                             f"with component in {MERGE_COMPONENTS}")
    return Merged(merged, [merge_site(s, tau, zero_tol) for s in sites])
