"""Checks that run before any work: a checkpoint's config against its weights, its shard index
against its shards, and the probe batch against the model. Shapes come from the safetensors
headers (no tensor data is read); every problem is one ``CheckpointError`` line that names the
value and what is accepted.
"""

from __future__ import annotations

import json
import re
from itertools import zip_longest
from pathlib import Path

from probes.checkpoint.discover import SAFETENSORS_INDEX, CheckpointError
from probes.measure.arch import Layout

# the config keys that set the shapes a reader expects, named in the error when they disagree
SHAPE_KEYS = ("num_hidden_layers", "n_layer", "hidden_size", "n_embd", "num_attention_heads",
              "n_head", "num_key_value_heads", "intermediate_size", "n_inner", "head_dim")


def _config_text(config) -> str:
    keys = [k for k in SHAPE_KEYS if hasattr(config, k) and getattr(config, k) is not None]
    return ", ".join(f"{k}={getattr(config, k)}" for k in keys)


def check_index(folder: Path, source) -> None:
    """A sharded checkpoint's index against its shards: every tensor the index names is in the
    shard it names, and no ``*.safetensors`` file on disk is left out of the index.

    Args:
        folder: the checkpoint folder; source: its ``SafetensorsTensors``.

    Raises:
        CheckpointError: the first mismatch.
    """
    index = folder / SAFETENSORS_INDEX
    if not index.is_file():
        return
    weight_map = json.loads(index.read_text())["weight_map"]
    held = source.by_file
    for name, shard in weight_map.items():
        if name not in held.get(shard, ()):
            raise CheckpointError(f"{index} names tensor {name!r} in shard {shard!r}, which does not "
                                  f"hold it: accepted is an index that matches its shards")
    named = set(weight_map.values())
    stray = sorted(p.name for p in folder.glob("*.safetensors") if p.name not in named)
    if stray:
        raise CheckpointError(f"shard {stray[0]!r} in {str(folder)!r} is not named in {SAFETENSORS_INDEX}"
                              f" (a stale index?): accepted is an index that names every shard")


def _rows(shape: tuple[int, ...], kind: str) -> int:
    """Output neurons of a stored weight: (d_out, d_in) linear, (d_in, d_out) GPT-2 Conv1D."""
    return shape[1] if kind == "conv1d" else shape[0]


def check_weights(folder: Path, config, layout: Layout, source, prefix: str, meta) -> None:
    """The config against the weights, before any tensor is read: every tensor the model expects
    is there with the shape the config gives it (``check_all_tensors``; the model built from the
    config on the meta device), and so is every tensor the reader needs; the weights hold no layer
    beyond the config's, and every component's units split evenly into its heads.

    Args:
        folder: the checkpoint (for messages); config: its transformers config; layout: the
            reader; source: tensor source with ``names``, ``__contains__`` and ``shape``;
            prefix: the key prefix of the layout's paths in ``source``; meta: the model built from
            the config on the meta device.

    Raises:
        CheckpointError: naming the tensor, both shapes and the config's shape keys.
    """
    where = f"config.json of {str(folder)!r} ({_config_text(config)})"
    check_all_tensors(where, source, meta)
    for block in layout.blocks:
        for part in block.parts:
            name = f"{block.module(part)}.weight"
            if prefix + name not in source:
                if part.optional:
                    continue
                raise CheckpointError(f"{where} disagrees with its weights: they lack {prefix + name!r}"
                                      f" that it implies: accepted is a config that matches the weights")
            # (its shape against the config's model: check_all_tensors, above)
            n = _rows(source.shape(prefix + name), part.kind)
            if part.select is not None:
                n = len(range(n)[part.select]) if isinstance(part.select, slice) else len(part.select)
            if part.heads >= 2 and n % part.heads:
                raise CheckpointError(f"{where}: {n} units of {prefix + name!r} do not split into "
                                      f"{part.heads} heads: accepted are head counts that divide them")
    _check_extra_layers(where, layout, source, prefix)


# at most this many tensors are named in one error line (then a count)
MAX_NAMED = 4


def check_all_tensors(where: str, source, meta) -> None:
    """Every tensor the model built from config.json expects (its whole state dict, not only what
    the reader uses) against the weights' names and shapes, as ``from_pretrained`` would map
    them: transformers' own key renamings (e.g. GPT-NeoX's ``embed_out`` -> ``lm_head``) and the
    base-model prefix. A tensor the files lack would be drawn at random by ``from_pretrained``;
    it is legitimate only where the model ties it to another (``all_tied_weights_keys``, which
    follows the config's ``tie_word_embeddings``) or transformers itself never expects it on disk
    (``_keys_to_ignore_on_load_missing``). Tensors that a transformers converter fuses (e.g.
    per-expert MoE weights) are checked by name only.

    Args:
        where: the config's description for messages; source: tensor source (``names``,
            ``shape``); meta: the model built from the config on the meta device.

    Raises:
        CheckpointError: naming the first ``MAX_NAMED`` mismatched or missing tensors with both
            shapes, and how many there are in all.
    """
    expected = {n: tuple(t.shape) for n, t in meta.state_dict().items()}
    rename = _renamer(meta, expected)
    held, fused = {}, set()
    for key in source.names():
        name, converter = rename(key)
        if converter is not None:
            fused.add(name)
        else:
            held[name] = tuple(source.shape(key))
    tied = set(getattr(meta, "all_tied_weights_keys", None) or ())
    ignore = [re.compile(p) for p in (getattr(meta, "_keys_to_ignore_on_load_missing", None) or ())]
    bad = []
    for name, shape in expected.items():
        if name in held:
            if held[name] != shape:
                bad.append(f"{name!r} is {list(held[name])} in the weights and {list(shape)} by the config")
        elif name not in tied and name not in fused and not any(p.search(name) for p in ignore):
            bad.append(f"they lack {name!r} {list(shape)}")
    if bad:
        more = f" (and {len(bad) - MAX_NAMED} more)" if len(bad) > MAX_NAMED else ""
        raise CheckpointError(f"{where} disagrees with its weights in {len(bad)} tensor(s): "
                              f"{'; '.join(bad[:MAX_NAMED])}{more}: accepted is a config that "
                              f"matches every tensor of the weights (transformers would draw the "
                              f"others at random)")


def _renamer(meta, expected: dict):
    """key -> (the model's name for it, the converter pattern or None), by transformers' own
    loading rules where this version has them (5.x), else the stored name."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key
    except ImportError:  # transformers 4.x stores and loads the same names
        return lambda key: (key, None)
    transforms = get_model_conversion_mapping(meta)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    prefix = getattr(meta, "base_model_prefix", None) or None
    return lambda key: rename_source_key(key, renamings, converters, prefix, expected)


def _check_extra_layers(where: str, layout: Layout, source, prefix: str) -> None:
    """Refuse weights with a block after the layout's last one (a config with too few layers)."""
    last = layout.blocks[-1].path
    m = re.match(r"^(.*?)(\d+)$", last)
    if not m:
        return
    nxt = f"{prefix}{m.group(1)}{int(m.group(2)) + 1}."
    extra = next((n for n in source.names() if n.startswith(nxt)), None)
    if extra is not None:
        raise CheckpointError(f"{where} has fewer layers than its weights ({extra!r} is beyond the "
                              f"last layer it gives): accepted is a config that matches the weights")


def check_batch(batch, config, run_id: str) -> list[str]:
    """The probe batch against the model: token ids inside the vocabulary (else refused),
    sequences no longer than the position table (else cut, with a note).

    Args:
        batch: a ``ProbeBatch``; its passes are edited in place when cut.
        config: the model's config (``vocab_size``; ``max_position_embeddings`` or
            ``n_positions`` when it has a position table).

    Returns:
        notes for the user (empty when nothing was cut).

    Raises:
        CheckpointError: a token id outside [0, vocab_size).
    """
    vocab = getattr(config, "vocab_size", None)
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    notes, cut = [], 0
    for p in batch.passes:
        ids = p.get("input_ids")
        if ids is None:
            continue
        if isinstance(vocab, int) and ids.numel() and (int(ids.max()) >= vocab or int(ids.min()) < 0):
            bad = int(ids.max()) if int(ids.max()) >= vocab else int(ids.min())
            raise CheckpointError(f"probe input token id {bad} is outside the vocabulary of {run_id} "
                                  f"(vocab_size={vocab}): accepted are ids in [0, {vocab}), e.g. "
                                  f"text tokenized by the checkpoint's own tokenizer")
        if isinstance(limit, int) and ids.ndim == 2 and ids.shape[1] > limit:
            cut += 1
            for key, value in list(p.items()):
                if hasattr(value, "ndim") and value.ndim == 2 and value.shape[1] == ids.shape[1]:
                    p[key] = value[:, :limit]
    if cut:
        notes.append(f"{run_id}: {cut} probe input(s) cut to {limit} tokens, the length of its "
                     f"position table")
    return notes


def unit_shapes(config, layout, source, prefix: str, fold: bool) -> list[tuple[str, object]]:
    """(what, value) pairs that fix a checkpoint's weight-basis unit sets, in layout order: its
    model type, reader and layers, then per part the heads it splits into, the neurons it
    selects and the stored shapes of its weight and bias (and, with ``fold``, of the norm folded
    into it). Read from the headers: no tensor data. Names are below the base prefix, so a base
    model and its task-head model compare equal.

    Args:
        config: transformers config (or None); layout: the reader; source: tensor source
            (``__contains__``, ``shape``); prefix: key prefix of the layout's paths; fold: as
            ``--fold_norms``.
    """
    def shape(name: str):
        return list(source.shape(prefix + name)) if prefix + name in source else None

    out = [("model_type", getattr(config, "model_type", None)), ("unit reader", layout.reader),
           ("layers", [b.layer for b in layout.blocks])]
    for b in layout.blocks:
        for p in b.parts:
            where, module = f"layer {b.layer} {p.component}", b.module(p)
            select = p.select
            if select is not None and not isinstance(select, slice):
                select = [int(i) for i in select]
            out += [(f"{where} heads", p.heads), (f"{where} selected neurons", select),
                    (f"{module}.weight", shape(f"{module}.weight")),
                    (f"{module}.bias", shape(f"{module}.bias"))]
            norm = b.norms.get(p.module) if fold else None
            if norm is not None:
                out += [(f"{norm}.weight", shape(f"{norm}.weight")),
                        (f"{norm}.bias", shape(f"{norm}.bias"))]
        out.append((f"layer {b.layer} head forms", b.qk_heads))
    return out


def check_reference(plan, reference, fold: bool, spec: str) -> None:
    """A ``--reference`` checkpoint against one probed checkpoint: the same ``unit_shapes``, so
    that every unit set has a partner of the same shape, row for row.

    Args:
        plan, reference: the two ``probes.checkpoint.probe.Plan`` s; fold: as ``--fold_norms``;
        spec: the ``--reference`` value (for the message).

    Raises:
        CheckpointError: naming the first difference, both values and what is accepted.
    """
    mine = unit_shapes(plan.config, plan.layout, plan.source, plan.prefix, fold)
    theirs = unit_shapes(reference.config, reference.layout, reference.source, reference.prefix, fold)
    for (what, value), (what_ref, value_ref) in zip_longest(mine, theirs,
                                                            fillvalue=("nothing more", None)):
        if what == what_ref and value == value_ref:
            continue
        differ = (f"{what} is {value_ref} in the reference and {value} in the checkpoint"
                  if what == what_ref else f"the reference has {what_ref} where the checkpoint "
                  f"has {what}")
        raise CheckpointError(f"--reference {spec!r} does not match checkpoint "
                              f"{str(plan.ckpt.path)!r}: {differ}: accepted is a checkpoint of the "
                              f"same architecture and unit-set shapes (its step 0, or the base "
                              f"model it was tuned from)")
