"""The merge probe of a checkpoint (``--merge_probe true``, needs ``--probe_inputs``): merge the
condensed groups and score the narrower network by its next-token loss on the probe inputs.

For every merge site of the model (``probes.measure.arch.merge_sites``: each layer's MLP neurons,
``mlp.in`` or, gated, ``mlp.gate_up``; each layer's query rows with their key rows, ``attn.q``,
all heads) and each threshold tau of ``--thresholds``, that site's groups are merged in place
(``probes.measure.merge``), the model is run on the probe batch and the site restored bit for
bit; then every site is merged at once (component ``all``, layer empty). With ``--fold_norms
true`` (default) the norm gains are folded into the rows first (``fold_norm_gains``: function-
preserving up to float rounding), so that the groups merged are those the weight basis reports.

Exactness (``probes.measure.merge``): ReLU neurons and query rows with learned positions merge
exactly when a group's rows are parallel; GELU / SiLU MLPs and gated MLPs only when rows are
equal (gate) and parallel (up); with RoPE (Llama family; GPT-NeoX's rotary rows) the
query-row merge is not exact;
grouped-query attention merges a row only when it is in one group in every query head that
reads the key head, exact when those heads' coefficients are proportional. Everything else is
approximate and measured here. Encoders (BERT, RoBERTa) have merge sites, but only their causal-LM
classes have next-token logits to score (``check_merge``).

metrics.csv rows (basis ``weight``, head empty, threshold tau, n_units = the units before):
``merged_width`` (units left: neurons, or query rows summed over heads), ``loss_merged`` (the
merged model's mean next-token cross-entropy in nats over the probe batch's predicted tokens),
``rel_loss_change`` ((loss_merged - loss) / loss, loss = the unmerged model's) and
``max_abs_logit_diff`` (max |logit difference| over every position and vocabulary entry).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from probes.checkpoint.discover import CheckpointError, model_class
from probes.measure.arch import check_mergeable
from probes.measure.merge import (
    UnsupportedModel,
    fold_norm_gains,
    merge_sites,
    merged_in_place,
    site_labels,
)
from probes.measure.result import metric_row

LM_CLASS_SUFFIXES = ("ForCausalLM", "LMHeadModel")
MERGE_METRICS = ("merged_width", "loss_merged", "rel_loss_change", "max_abs_logit_diff")


def check_merge(plan, trust_remote_code: bool = False) -> None:
    """Check before any work that the merge probe can run on a planned checkpoint: a model type
    with merge sites, a causal language model (logits over tokens) and token probe inputs.

    Raises:
        CheckpointError: one line naming what is accepted.
    """
    where = f"--merge_probe: checkpoint {str(plan.ckpt.path)!r}"
    try:
        check_mergeable(plan.config)
    except UnsupportedModel as e:
        raise CheckpointError(f"{where}: {e}") from e
    cls = type(plan.model) if plan.model is not None else model_class(plan.config, trust_remote_code)
    if not cls.__name__.endswith(LM_CLASS_SUFFIXES):
        raise CheckpointError(f"{where} is built as {cls.__name__}, which has no next-token "
                              f"logits: accepted are causal language models "
                              f"(*{', *'.join(LM_CLASS_SUFFIXES)})")
    if plan.batch is None or not all("input_ids" in p for p in plan.batch.passes):
        raise CheckpointError(f"{where}: the next-token loss needs token inputs: accepted "
                              f"--probe_inputs are a text file of lines or a token task")


@torch.no_grad()
def next_token_loss(model, batch, device, reference: list[torch.Tensor] | None = None):
    """The mean next-token cross-entropy of ``model`` on a probe batch.

    Args:
        model: a causal LM (output ``.logits`` (b, t, vocab)); batch: a ``ProbeBatch`` whose
            passes hold ``input_ids`` (b, t) (and optionally ``attention_mask``).
        device: where the passes run.
        reference: logits of an earlier call (one float32 CPU tensor per pass), or None.

    Returns:
        (loss in nats per predicted token (float), the logits per pass as float32 CPU tensors
        when ``reference`` is None, else the max |logit - reference| (float)).

    Raises:
        CheckpointError: output without (b, t, vocab) logits, or no token to predict.
    """
    total, count, logits_out, diff = 0.0, 0, [], 0.0
    for i, inputs in enumerate(batch.passes):
        ids = inputs["input_ids"].to(device)
        out = model(**{k: v.to(device) for k, v in inputs.items()})
        logits = getattr(out, "logits", None)
        if logits is None or logits.shape[:2] != ids.shape:
            raise CheckpointError(f"--merge_probe: the model gave no (batch, tokens, vocab) logits "
                                  f"for inputs of shape {tuple(ids.shape)}: accepted are causal "
                                  f"language models")
        logits = logits.float()
        mask = inputs.get("attention_mask")
        mask = torch.ones_like(ids[:, 1:]) if mask is None else mask[:, 1:].to(device)
        ce = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                             reduction="none")
        total += (ce * mask.reshape(-1)).sum().item()
        count += int(mask.sum().item())
        if reference is None:
            logits_out.append(logits.cpu())
        else:
            diff = max(diff, (logits.cpu() - reference[i]).abs().max().item())
    if count == 0:
        raise CheckpointError("--merge_probe: the probe inputs have no token to predict (every "
                              "input is one token long): accepted are lines of two tokens or more")
    return total / count, (logits_out if reference is None else diff)


def merge_rows(model, batch, thresholds, base: dict, device, fold: bool = True,
               threads: int | None = None, progress=None) -> list[dict]:
    """metrics.csv rows of the merge probe (module docstring) of one loaded checkpoint.

    Args:
        model: the loaded causal LM (eval mode). It is left with its norm gains folded when
            ``fold`` (the same function up to float rounding) and otherwise as it was: every merge
            is undone bit for bit.
        batch: the probe batch (``ProbeBatch`` with ``input_ids``); thresholds: taus in (0, 1).
        base: run_id and step of the rows; device: where the passes run.
        fold: fold the norm gains first (``--fold_norms``).
        threads: torch threads for the forward passes (None: as set).
        progress: called after each site (or None).

    Returns:
        rows with METRICS_COLUMNS keys: 4 metrics per (site, tau) and per tau for ``all``.

    Raises:
        CheckpointError: no logits, no token to predict; UnsupportedModel: no merge sites.
    """
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        model.to(device)
        loss, reference = next_token_loss(model, batch, device)
        if fold:
            with torch.no_grad():
                fold_norm_gains(model)
        sites = merge_sites(model)
        labels = [site_labels(s, thresholds) for s in sites]
        rows = []
        for chosen in [*[[i] for i in range(len(sites))], list(range(len(sites)))]:
            for tau in thresholds:
                with merged_in_place([sites[i] for i in chosen], tau,
                                     [labels[i] for i in chosen]) as widths:
                    merged, diff = next_token_loss(model, batch, device, reference)
                one = len(chosen) == 1
                where = dict(layer=widths[0]["layer"] if one else None,
                             component=widths[0]["component"] if one else "all", basis="weight",
                             threshold=float(tau), n_units=sum(w["n_units"] for w in widths))
                values = dict(merged_width=float(sum(w["merged_width"] for w in widths)),
                              loss_merged=merged,
                              rel_loss_change=(merged - loss) / loss if loss else float("nan"),
                              max_abs_logit_diff=diff)
                rows += [metric_row(**base, **where, metric=m, value=v) for m, v in values.items()]
            if progress is not None:
                progress()
        return rows
    finally:
        torch.set_num_threads(before)
