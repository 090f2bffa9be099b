"""Probe planned checkpoints: every check before any work (``plan_all``), then the weight basis
read one layer at a time and, when asked, the activation basis over a probe batch (``Prober``).

Units come from ``probes.measure`` (the same readers and metrics as training probes); the
checkpoint's files from ``probes.checkpoint.discover``; the probe batch from
``probes.checkpoint.inputs``. Every problem is a ``CheckpointError`` (one line, for the user).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from probes.checkpoint import inputs as probe_inputs
from probes.checkpoint.activations import activation_units
from probes.checkpoint.discover import (
    Checkpoint,
    CheckpointError,
    discover,
    load_config,
    load_model,
    meta_model,
    model_class,
    open_weights,
    unique_run_ids,
)
from probes.checkpoint.gguf import load_gguf
from probes.checkpoint.merge import check_merge, merge_rows
from probes.checkpoint.validate import check_batch, check_index, check_reference, check_weights
from probes.measure.arch import REGISTRY, Layout, UnsupportedModel, discover_layout, layout_for
from probes.measure.drift import drift
from probes.measure.family_units import NO_RD
from probes.measure.fitting import Fitter, UnitsError
from probes.measure.probe import measure_units
from probes.measure.result import ProbeResult
from probes.measure.units import ModelTensors, base_prefix, block_units
from probes.store import provenance


@dataclass
class Options:
    """The parsed ``--checkpoint`` command line (``probes.checkpoint.cli.parse_args``)."""

    checkpoints: list[str]
    output_dir: Path
    probe_inputs: str | None
    probe_samples: int
    allow_pickle: bool
    trust_remote_code: bool
    thresholds: list[float]
    heatmap_layers: list[int] | None
    heatmap_component: str | None
    num_threads: int | None
    fold_norms: bool = True
    activation_point: str = "pre"
    merge_probe: bool = False  # merge rows (probes.checkpoint.merge); needs probe_inputs
    spectral_metrics: bool | str = True  # Condensation's spectral: True, False or "stable"
    # the bases measured (activation: with probe_inputs only); probes.measure(basis=...) picks one
    bases: tuple[str, ...] = ("weight", "activation")
    chance_draws: int = 0  # draws of each chance baseline (probes.measure.chance); 0: none
    chance_nulls: str = "both"  # isotropic | covariance | both
    reference: str | None = None  # --reference: weight-basis rd and angles from this checkpoint

    @property
    def heatmap_threshold(self) -> float:
        """The threshold whose groups the heat maps and the summary show: 0.9 when measured."""
        return 0.9 if 0.9 in self.thresholds else self.thresholds[0]


# --- planning: every check before any work ----------------------------------------------------

@dataclass
class Plan:
    """One checkpoint, checked and ready: its config, layout, weights and what to draw."""

    ckpt: Checkpoint
    config: object
    layout: Layout
    fmt: str
    n_params: int
    source: object = None  # tensor source (opened when planned, so broken files fail early)
    model: object = None  # the whole model: GGUF files, or when activations are asked for
    tokenizer: object = None  # shipped with a GGUF file
    batch: object = None  # the probe batch (probes.checkpoint.inputs.ProbeBatch), when asked for
    prefix: str = ""  # key prefix in front of the layout's block paths
    draw_layers: list[int] = field(default_factory=list)  # chosen layers (heat maps, series plot)
    component: str = ""  # chosen component
    draw: bool = True  # heat maps of this checkpoint (only the last step of a series)
    reference: Plan | None = None  # the checked --reference checkpoint (set_reference)


def _layout(config, meta) -> Layout:
    try:
        return layout_for(config)
    except UnsupportedModel:
        return discover_layout(meta)


def _draw_choice(plan: Plan, opts: Options) -> None:
    layers = sorted({b.layer for b in plan.layout.blocks})
    chosen = opts.heatmap_layers or sorted({layers[0], layers[len(layers) // 2], layers[-1]})
    bad = [x for x in chosen if x not in layers]
    if bad:
        raise CheckpointError(f"--heatmap_layers {bad} not in checkpoint {plan.ckpt.run_id!r}: "
                              f"accepted are its layers {layers[0]}..{layers[-1]}")
    comps = list(dict.fromkeys(p.component for b in plan.layout.blocks for p in b.parts))
    component = opts.heatmap_component or ("attn.q" if "attn.q" in comps else comps[0])
    if component not in comps:
        raise CheckpointError(f"--heatmap_component {component!r} is not in checkpoint "
                              f"{plan.ckpt.run_id!r}: accepted are {comps}")
    plan.draw_layers, plan.component = chosen, component


def plan_checkpoint(ckpt: Checkpoint, opts: Options, notes: list[str]) -> Plan:
    """Check one checkpoint (config, safety, weights, reader, heat-map choice) without probing.

    Raises:
        CheckpointError: anything that would stop the probe (one line).
    """
    if ckpt.gguf:
        try:
            model, tokenizer = load_gguf(ckpt.path)
        except ValueError as e:
            raise CheckpointError(str(e)) from e
        layout = _layout(model.config, model)
        plan = Plan(ckpt, model.config, layout, "gguf", model.num_parameters(),
                    ModelTensors(model), model, tokenizer)
    else:
        config = load_config(ckpt.path, opts.trust_remote_code)
        meta = meta_model(config, opts.trust_remote_code)
        try:
            layout = _layout(config, meta)
        except UnsupportedModel as e:
            raise CheckpointError(f"checkpoint {str(ckpt.path)!r}: {e}") from e
        fmt, source = open_weights(ckpt.path, opts.allow_pickle)
        if fmt == "safetensors":
            check_index(ckpt.path, source)
        plan = Plan(ckpt, config, layout, fmt, meta.num_parameters(), source)
    try:
        plan.prefix = base_prefix(plan.source.names(), layout)
    except UnsupportedModel as e:
        raise CheckpointError(f"checkpoint {str(ckpt.path)!r}: {e}") from e
    if not ckpt.gguf:
        check_weights(ckpt.path, config, layout, plan.source, plan.prefix, meta)
    notes.extend(f"{ckpt.run_id}: {n}" for n in layout.notes)
    depth = getattr(plan.config, "num_hidden_layers", None)
    if isinstance(depth, int) and 0 < len(layout.blocks) < depth:  # ALBERT's shared groups
        notes.append(f"{ckpt.run_id}: its weights hold {len(layout.blocks)} layer(s) for "
                     f"num_hidden_layers={depth} (shared across depth): the weight basis reports "
                     f"each stored layer once, numbered as stored")
    _draw_choice(plan, opts)
    return plan


class Hint(str):
    """A note that suggests an option (shown as an info line), not a warning about the input."""


def plan_all(opts: Options, reference: Plan | None = None) -> tuple[list[Plan], list[str]]:
    """Discover and check every checkpoint named on the command line (see ``plan_checkpoint``)
    and their reference (``reference``, else ``opts.reference`` planned here); only the last
    step of a series is drawn as heat maps."""
    ckpts = unique_run_ids([c for arg in opts.checkpoints for c in discover(arg)])
    notes: list[str] = []
    plans = [plan_checkpoint(c, opts, notes) for c in ckpts]
    for i, plan in enumerate(plans):
        nxt = plans[i + 1].ckpt if i + 1 < len(plans) else None
        if nxt is not None and nxt.series is not None and nxt.series == plan.ckpt.series:
            plan.draw = False
    if reference is not None or opts.reference is not None:
        spec = opts.reference or str(reference.ckpt.path)
        set_reference(plans, reference or plan_reference(spec, opts), opts, spec)
    else:
        notes += [Hint(f"{p.ckpt.run_id}: its step 0 is in the series: --reference {p.ckpt.path} "
                       f"(reference= in probes.measure) would add each step's rd and unit angles")
                  for p in plans if p.ckpt.series is not None and p.ckpt.step == 0]
    if opts.probe_inputs:
        for plan in plans:
            notes += check_inputs(plan, opts)
            if opts.merge_probe:
                check_merge(plan, opts.trust_remote_code)
    return plans, list(dict.fromkeys(notes))


def plan_reference(spec: str, opts: Options) -> Plan:
    """The planned ``--reference`` checkpoint: one checkpoint, checked as any other. Raises
    CheckpointError: as ``plan_checkpoint`` (named as the reference), or a series of steps."""
    try:
        found = discover(spec)
        if len(found) == 1:
            return plan_checkpoint(found[0], opts, [])
    except CheckpointError as e:
        raise CheckpointError(f"--reference: {e}") from e
    raise CheckpointError(f"--reference {spec!r} holds {len(found)} step checkpoints (steps "
                          f"{', '.join(str(c.step) for c in found[:6])}): accepted is one "
                          f"checkpoint, e.g. {found[0].path}")


def set_reference(plans: list[Plan], reference: Plan, opts: Options, spec: str) -> None:
    """Give every plan its reference, after ``check_reference`` (raises CheckpointError)."""
    for plan in plans:
        check_reference(plan, reference, opts.fold_norms, spec)
        plan.reference = reference


def check_inputs(plan: Plan, opts: Options) -> list[str]:
    """Build the checkpoint's probe batch now, so that inputs it cannot read fail before any work;
    returns notes for the user (inputs cut to the position table).

    Raises:
        CheckpointError: inputs of a kind the checkpoint cannot read (no tokenizer, no image
            processor, a task without the model's input column, ...).
    """
    pi = probe_inputs
    spec, folder, n = opts.probe_inputs, plan.ckpt.path, opts.probe_samples
    kind = pi.input_kind(spec)
    if kind == "task":
        input_name = model_class(plan.config, opts.trust_remote_code).main_input_name
        plan.batch = pi.task_batch(spec, folder, input_name, n)
    elif kind == "text":
        plan.batch = pi.text_batch(Path(spec), plan.tokenizer or pi.load_tokenizer(folder), n)
    else:
        plan.batch = pi.image_batch(Path(spec), pi.load_image_processor(folder), n)
    return check_batch(plan.batch, plan.config, plan.ckpt.run_id)


# --- probing ----------------------------------------------------------------------------------

def applied(plan: Plan, opts: Options) -> tuple[bool, str, list[str]]:
    """What the options did to one checkpoint, for its runs row (what was done, not what was
    asked): whether norm gains were folded into the weight-basis rows (``units.block_parts``
    folds a part that ``Block.norms`` maps), the activation basis's capture point (empty without
    it; ``post`` when some unit set was captured after its nonlinearity, ``Part.post``; ``pre``
    otherwise), and a note for each option asked for and not (wholly) applied."""
    layout, notes = plan.layout, []
    parts = [(b, p) for b in layout.blocks for p in b.parts]
    normed = any(p.module in b.norms for b, p in parts)
    weight = "weight" in opts.bases
    if opts.fold_norms and weight and not normed:
        notes.append(f"fold_norms: no norm feeds the parts the {layout.reader!r} reader measures "
                     f"(none, or post-LN), so the weight basis measured the stored rows")
    arch = REGISTRY.get(getattr(plan.config, "model_type", None))
    if opts.merge_probe and opts.fold_norms and normed and arch is not None and not arch.fold_norms:
        notes.append("fold_norms: not applied to the merge probe (these norms also feed the "
                     "residual stream, so folding them changes the function): it merged the "
                     "groups of the stored rows, not the weight basis's groups")
    point = ""
    if opts.probe_inputs and "activation" in opts.bases:
        post = opts.activation_point == "post" and any(p.post for _, p in parts)
        point = "post" if post else "pre"
        pre = list(dict.fromkeys(p.component for _, p in parts if not p.post))
        if opts.activation_point == "post" and pre:
            notes.append(f"activation_point post: {', '.join(pre)} "
                         f"{'have' if len(pre) > 1 else 'has'} no point after a nonlinearity "
                         f"and {'were' if len(pre) > 1 else 'was'} captured pre")
    return bool(opts.fold_norms and weight and normed), point, notes


class Prober:
    """Measures one planned checkpoint in the weight basis (and the activation basis if asked)."""

    def __init__(self, plan: Plan, opts: Options, fitter: Fitter, progress=None, device="cpu",
                 warn=None):
        self.plan, self.opts, self.fitter, self.device = plan, opts, fitter, device
        self.progress = progress or (lambda: None)
        self.warn = warn or (lambda text: None)
        self.n_samples = None
        self.drift = {}  # (layer, component, head) -> drift() of the weight set, until collected
        self.threshold = opts.heatmap_threshold

    def run(self) -> ProbeResult:
        """Measure the checkpoint (``measure_units`` for each basis); frees its weights and
        model afterwards. The result's ``record`` is the checkpoint's runs.csv row.

        Raises:
            CheckpointError: a tensor that cannot be read, units that are not finite.
        """
        start = time.perf_counter()
        plan = self.plan
        result = ProbeResult(plan.ckpt.step)
        if "weight" in self.opts.bases:
            result.add(self.measure("weight", (self.weight_sets(b) for b in plan.layout.blocks)))
        if self.opts.probe_inputs and "activation" in self.opts.bases:
            result.add(self.measure("activation", self.activation_sets()))
        if self.opts.merge_probe:  # last: it folds the model's norm gains
            result.metrics += merge_rows(self.load_model(), plan.batch, self.opts.thresholds,
                                         dict(run_id=plan.ckpt.run_id, step=plan.ckpt.step),
                                         self.device, self.opts.fold_norms,
                                         self.fitter.torch_threads)
        plan.source = plan.model = plan.batch = None  # free memory before the next checkpoint
        folded, point, notes = applied(plan, self.opts)
        result.record = dict(
            run_id=plan.ckpt.run_id, step=plan.ckpt.step, checkpoint=str(plan.ckpt.path),
            format=plan.fmt, model_type=getattr(plan.config, "model_type", ""),
            architecture=(getattr(plan.config, "architectures", None) or [""])[0],
            n_params=plan.n_params, n_layers=len({b.layer for b in plan.layout.blocks}),
            unit_reader=plan.layout.reader, fold_norms=folded,
            spectral_metrics=self.opts.spectral_metrics, activation_point=point,
            probe_inputs=self.opts.probe_inputs or "",
            reference=str(plan.reference.ckpt.path) if plan.reference else "",
            n_samples=self.n_samples, wall_s=round(time.perf_counter() - start, 2),
            **provenance(), notes="; ".join(notes))
        return result

    def weight_sets(self, block) -> list:
        """The weight-basis unit sets of one block (and, with a reference, their ``drift`` from
        the reference's same sets, kept until collected); a tensor the checks could not foresee
        (a discovered layout) becomes a CheckpointError."""
        sets = self.read(self.plan, block)
        ref = self.plan.reference
        if ref is not None:  # its block of the same layer: check_reference saw the same sets
            same = next(b for b in ref.layout.blocks if b.layer == block.layer)
            self.drift |= {(u.layer, u.component, u.head): drift(u.units.numpy(), r.units.numpy())
                           for u, r in zip(sets, self.read(ref, same)) if u.component not in NO_RD}
        return sets

    def read(self, plan: Plan, block) -> list:
        """``block_units`` of ``plan``'s block; a read error becomes a CheckpointError."""
        try:
            return block_units(plan.source, plan.prefix, block, self.opts.fold_norms)
        except (KeyError, ValueError) as e:
            raise CheckpointError(f"checkpoint {str(plan.ckpt.path)!r} layer {block.layer}: "
                                  f"{str(e).strip(chr(39))}") from e

    def measure(self, basis: str, layers) -> ProbeResult:
        """``measure_units`` of the layers' unit sets in ``basis``; a set with NaN or inf
        becomes a CheckpointError."""
        ckpt = self.plan.ckpt
        try:
            return measure_units(layers, self.fitter, dict(run_id=ckpt.run_id, step=ckpt.step),
                                 basis=basis, drift=self.reference_drift, drawn=self.drawn,
                                 threshold=self.threshold, label=f"checkpoint {str(ckpt.path)!r}",
                                 progress=self.progress)
        except UnitsError as e:
            raise CheckpointError(str(e)) from e

    def reference_drift(self, u):
        """The ``drift`` of weight set ``u`` from the reference's, computed when its layer was
        read (``weight_sets``); None without a reference."""
        return self.drift.pop((u.layer, u.component, u.head), None)

    def drawn(self, u) -> bool:
        """Whether unit set ``u`` (a UnitSet) is drawn as a heat map (its fit keeps the order)."""
        return (self.plan.draw and u.layer in self.plan.draw_layers and u.head is None
                and u.component == self.plan.component)

    def activation_sets(self):
        """Per layer, the unit sets of the activation basis (``checkpoint.activations``)."""
        layers, self.n_samples, notes = activation_units(
            self.load_model(), self.plan.layout, self.plan.batch, self.opts.probe_samples,
            self.opts.activation_point, self.device, self.fitter.torch_threads, self.plan.ckpt.run_id)
        for note in notes:
            self.warn(note)
        yield from layers

    def load_model(self):
        """The whole model (loaded once, kept on the plan until ``run`` ends)."""
        plan = self.plan
        if plan.model is None:
            plan.model = load_model(plan.ckpt.path, plan.config, self.opts.allow_pickle,
                                    self.opts.trust_remote_code)
        return plan.model
