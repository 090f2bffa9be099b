"""The merge probe of a training run: merge the condensed groups and score the narrower network.

At the run's final probe and at its ``merge_steps`` (``merge_probe: true``), for every merge site
of the model (each layer's MLP neurons ``mlp.in`` and attention query rows with their key rows
``attn.q``, all heads of the layer; ``probes.measure.merge``) and at each threshold tau of the
run, the model is copied, that site's groups merged (``merge_model``), and the copy evaluated by
the task's own objective; then every site is merged at once (component ``all``, layer empty). This
is the embedding principle's test (Zhang et al., NeurIPS 2021, arXiv 2105.14573): a condensed
layer should behave like the narrower layer of one unit per group.

metrics.csv rows (basis ``weight``, head empty, threshold tau, n_units = the units before):
``merged_width`` (units left: neurons, or query rows = the sum of the heads' d_k),
``loss_merged`` (the task's train_loss of the merged model), ``rel_loss_change``
((loss_merged - train_loss) / train_loss), ``max_abs_logit_diff`` (max |output difference| over
the evaluated samples: last-position logits for token tasks, f(x) for regression),
``<score>_merged`` for each of the task's scores (acc_test_id_merged, ood_inferential_merged, ...)
and, when the model has more than one output (classes or tokens, not a regression),
``pred_agreement_<split>`` for each evaluated split: the share of its samples whose predicted
class (argmax of the outputs) the merged model keeps, n_units = the samples. The embedding
principle paper reports this agreement between a condensed net and its merged narrow net.
"""

from __future__ import annotations

import numpy as np
import torch

from probes.measure.merge import UnsupportedModel, merge_model, merge_sites
from probes.measure.result import metric_row
from tasks.objective import predict_last


@torch.no_grad()
def model_outputs(model, objective, data: dict, device) -> dict[str, torch.Tensor]:
    """The model's outputs on every evaluated split.

    Args:
        model: the model in eval mode; objective: the task's objective (its ``batch_columns[0]``
            is the input column: ``input_ids`` for token tasks, ``inputs`` for the mlp tasks).
        data: split -> column -> numpy array (the loop's evaluation data).

    Returns:
        split -> (n, out) float32 on CPU: last-position logits (token tasks) or f(x).
    """
    column = objective.batch_columns[0]
    outs = {}
    for split in data:
        x = data[split][column]
        if column == "input_ids":
            outs[split] = predict_last(model, x, device)[1]
        else:
            outs[split] = model(torch.as_tensor(x, device=device)).float().cpu().reshape(len(x), -1)
    return outs


def agreement_rows(merged: dict, reference: dict, base: dict) -> list[dict]:
    """``pred_agreement_<split>`` rows: the share of each split's samples whose argmax output the
    merged model keeps (n_units = the split's samples); none for single-output models, whose
    argmax is always 0, nor for an empty split.

    Args:
        merged, reference: split -> (n, out) outputs of the merged and the unmerged model.
        base: the other columns of the rows (run_id, step, layer, component, ...).
    """
    rows = []
    for split, ref in reference.items():
        if ref.shape[1] < 2 or not len(ref):
            continue
        same = (merged[split].argmax(-1) == ref.argmax(-1)).double().mean().item()
        rows.append(metric_row(**base, metric=f"pred_agreement_{split}", value=same,
                               n_units=len(ref)))
    return rows


def merge_rows(model, objective, data: dict, device, thresholds, base: dict,
               scores: dict) -> list[dict]:
    """metrics.csv rows of the merge probe (module docstring) for one model.

    Args:
        model: the trained model (eval mode, on ``device``); it is left unchanged.
        objective: the task's objective (``evaluate``, ``score_names``, ``batch_columns``).
        data: the loop's evaluation data; thresholds: cosine thresholds tau in (0, 1).
        base: run_id and step of the rows.
        scores: the unmerged model's scores at this step (``train_loss`` first).

    Returns:
        rows with METRICS_COLUMNS keys; [] for a model with no merge (ResNet).

    Raises:
        ValueError: a threshold outside (0, 1).
    """
    try:
        sites = [(s.layer, s.component) for s in merge_sites(model)]
    except UnsupportedModel:
        return []
    reference = model_outputs(model, objective, data, device)
    loss = scores["train_loss"]
    rows = []
    for only in [*sites, None]:
        for tau in thresholds:
            merged = merge_model(model, float(tau), only=only)
            ev = objective.evaluate(merged.model, data, device)
            outputs = model_outputs(merged.model, objective, data, device)
            diff = max(((outputs[s] - reference[s]).abs().max().item()
                        for s in reference if len(reference[s])), default=np.nan)
            width = sum(w["merged_width"] for w in merged.widths)
            units = sum(w["n_units"] for w in merged.widths)
            where = dict(layer=None if only is None else only[0],
                         component="all" if only is None else only[1], basis="weight",
                         threshold=float(tau))
            change = (ev.scores["train_loss"] - loss) / loss if loss else np.nan
            values = {"merged_width": float(width), "loss_merged": ev.scores["train_loss"],
                      "rel_loss_change": change, "max_abs_logit_diff": diff}
            values |= {f"{name}_merged": ev.scores[name] for name in objective.score_names}
            rows += [metric_row(**base, **where, metric=m, value=v, n_units=units)
                     for m, v in values.items()]
            rows += agreement_rows(outputs, reference, base | where)
            del merged
    return rows
