"""Every key of every command, with its type, default, section and one line of help: the fields
of ``RunKeys`` (training; ``probes.config.run_config.RunConfig`` extends it with the run's
identity), ``ProbeKeys`` (``probe`` / ``--checkpoint`` and ``align``) and ``TableKeys``.

A key that several commands take is written once: ``ThreadKeys`` and ``AnalysisKeys`` are bases of
both ``RunKeys`` and ``ProbeKeys``, so its type, default and help are the same everywhere. The
command line reads these fields through one grammar (``probes.config.grammar``); ``--help`` lists
them from their metadata.

This module uses the standard library only, so that ``--help`` (built from these fields'
metadata) and the key lists read here load neither torch nor the tasks. A key's help is
``field.metadata["help"]``, its section ``field.metadata["section"]`` and, for a key that takes
one of a few names, ``field.metadata["choices"]``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from probes.config.grammar import hints, list_item

EXPERIMENT = "experiment level (not part of a run's identity)"
TASK = "task"
TASK_OPTIONS = ("options of the task's generator, each a field of its dataclass in tasks/ (null: "
                "that field's default; a task that does not read a key records it as null); lists "
                'are strings like "34,43"')
MODEL = "model"
INIT = "initialization rate: std = d_in^-gamma; a part's own gamma overrides when set"
OPTIMIZATION = "optimization"
PROBES = "probes"  # what is measured of a trained model: the analysis keys
CHECKPOINTS = "checkpoints"  # what probe and align read, and how
CHANCE_NULLS = ("both", "isotropic", "covariance")  # probes.measure.chance.NULLS and both
SPECTRAL_CHOICES = (True, False, "stable")  # "stable": probes.measure.spectral.STABLE
ACTIVATION_POINTS = ("pre", "post")  # probes.checkpoint.activations: before / after the nonlinearity
THRESHOLDS = [0.7, 0.9, 0.95, 0.99]  # probes.measure.metrics.THRESHOLDS
LOG_LEVELS = ("debug", "info", "warning", "error")  # probes.logs.LOG_LEVELS


def _keys_of(section: str):
    """A maker of the fields of ``section``: ``make(default, help)``, or ``make(None, help,
    factory=f)`` for a mutable default (``f()`` is called for each instance); ``choices``: the
    names the key accepts."""

    def make(default: Any, help_text: str, *, factory=None, choices=None) -> Any:
        meta = {"section": section, "help": help_text}
        if choices is not None:
            meta["choices"] = choices
        if factory is not None:
            return dataclasses.field(default_factory=factory, metadata=meta)
        return dataclasses.field(default=default, metadata=meta)

    return make


_experiment, _task, _task_option, _model, _init, _optimization, _probes, _checkpoints = (
    _keys_of(s) for s in (EXPERIMENT, TASK, TASK_OPTIONS, MODEL, INIT, OPTIMIZATION, PROBES,
                          CHECKPOINTS))


@dataclass
class ThreadKeys:
    """The thread count, taken by every command that measures (train, measure, probe, align)."""

    num_threads: int | None = _experiment(None, "torch threads per process; default: all cores / processes")


@dataclass
class AnalysisKeys:
    """What is measured, shared by training, ``measure`` and ``probe`` (each key written once)."""

    merge_probe: bool = _probes(
        False, "merge each layer's condensed groups into one unit each and score the narrower model "
               "(training: at the final probe; probe: needs probe_inputs, a text file or token "
               "task, and a causal LM)")
    thresholds: list[float] = _probes(
        None, "cosine thresholds tau of the group counts (a list by nature: never a grid, as merge_steps)",
        factory=lambda: list(THRESHOLDS))
    chance_draws: int = _probes(
        0, "null unit sets drawn per unit set and probe for the chance level of n_groups and mean |cos| "
           "(probes.measure.chance; 0: off; 199: p-values down to 0.005)")
    chance_nulls: str = _probes("both", "the chance baselines' nulls: isotropic | covariance | both",
                                choices=CHANCE_NULLS)


@dataclass
class TrainingKeys(ThreadKeys):
    """The keys of a run that only training takes (``RunKeys`` adds ``AnalysisKeys``)."""
    experiment: str = _experiment("default", "the experiment's name: its output folder and runs.csv column")
    output_dir: str | None = _experiment(None, "default: reports/<experiment>")
    overwrite: bool = _experiment(False, "retrain runs whose results exist")
    save_checkpoints: str = _experiment("probes", "probes (the model at each probe step) | final | none")
    save_every: int = _experiment(500, "steps between resumable training states (0: none)")
    report_only: bool = _experiment(False, "write the reports of the finished runs, train nothing")
    log_every: int = _experiment(10, "steps between rows of runs/<run_id>/train_log.csv (0: no log)")
    reference_trajectories: str | None = _experiment(
        None, "CSV (gamma, step, scores) drawn beside the runs; in a config file, a relative path is found "
              "beside the file first")
    trajectory_axis: str = _experiment("step", "ood_over_training's x axis: step | samples (step x batch)")
    task: str = _task("composite", "the task (tasks.TASKS): composite, identity, sine, images, ...")
    data_seed: int = _task(0, "seed of the task's data (the model's is seed)")
    fresh_samples: bool = _task(False, "draw a new training batch every step instead of epochs")
    in_dim: int | None = _task(1, "mlp: input dimension of the net (sin_sum: also the task's; "
                                  "images_flat: channels x image_size^2)")
    seq_len: int | None = _task_option(None, "tokens per sequence (composite, composite_no_twist, "
                                              "multi_anchor, identity)")
    split_modulus: int | None = _task_option(None, "key/position split modulus (7 = n - 2 as in the paper)")
    n_train: int | None = _task_option(None, "training samples (a fixed set, trained for epochs)")
    n_test_id: int | None = _task_option(None, "in-distribution test samples")
    n_ood: int | None = _task_option(None, "out-of-distribution (held-out) samples")
    key_low: int | None = _task_option(None, "keys and noise are drawn from [key_low, key_high]")
    key_high: int | None = _task_option(None, "upper end of the key range")
    image_source: str | None = _task_option(
        None, "images, images_flat: digits | mnist5k | path to an .npz file")
    image_size: int | None = _task_option(None, "images, images_flat: side of the resized square images")
    test_fraction: float | None = _task_option(None, "images: held-out share")
    held_out: str | int | None = _task_option(
        None, "composite_no_twist / multi_anchor: held-out anchor pairs")
    ood_key_position: int | None = _task_option(None, "identity: the key position kept for ood")
    ood_hops: str | int | None = _task_option(None, "chain_search_hops: step sizes held out for ood")
    n_chains: int | None = _task_option(None, "chain_search_hops")
    chain_len: int | None = _task_option(None, "chain_search_hops")
    n_hop_anchors: int | None = _task_option(None, "chain_search_hops")
    ood_scoring: str | None = _task_option(
        None, "composite, composite_no_twist, multi_anchor: authors | pooled")
    hops: int | None = _task_option(None, "chain_search_authors: hops k from start to target")
    chain_nodes: int | None = _task_option(None, "chain_search_authors: nodes of the chain")
    model_family: str = _model("paper", "paper | gpt2 | mlp | resnet")
    n_layer: int = _model(2, "transformer blocks")
    n_head: int = _model(1, "attention heads (must divide n_embd)")
    n_embd: int = _model(64, "model width d_model")
    d_ff: int | None = _model(None, "MLP width (None: 3 n_embd for paper, 4 n_embd for gpt2)")
    vocab_size: int = _model(128, "token vocabulary size")
    dropout: float = _model(0.0, "dropout probability")
    head_bias: bool = _model(False, "paper: a bias on the output head (PyTorch's default init, kept)")
    width: int = _model(100, "mlp: hidden neurons m")
    activation: str = _model("relu", "mlp: relu | tanh | sigmoid | softplus | xtanh")
    gamma: float = _init(0.5, "init rate: every weight drawn with std = d_in^-gamma, in (0, 3]")
    gamma_embedding: float | None = _init(None, "the embeddings' own init rate (None: gamma)")
    gamma_attention: float | None = _init(None, "the attention's own init rate (None: gamma)")
    gamma_mlp: float | None = _init(None, "the MLPs' own init rate (None: gamma)")
    gamma_head: float | None = _init(None, "the output head's own init rate (None: gamma)")
    gamma_prime: float = _init(
        0.0, "mlp: std of a = m^-(gamma+gamma')/2, of (w, b) = m^-(gamma-gamma')/2")
    optimizer: str = _optimization(
        "adamw", "adamw | adam | sgd (full-batch GD: sgd with batch_size >= n_train)")
    lr_schedule: str = _optimization(
        "cosine", "cosine | constant (both after warmup_steps of linear warm-up)")
    lr_scaling: str = _optimization(
        "none", "mlp: none | ntk (lr divided by max(1, the tangent kernel's scale))")
    steps: int = _optimization(2000, "optimizer steps")
    batch_size: int = _optimization(512, "samples per step")
    lr: float = _optimization(1e-3, "peak learning rate")
    weight_decay: float = _optimization(0.01, "weight decay (decoupled for adamw, L2 otherwise)")
    warmup_steps: int = _optimization(100, "steps of linear learning-rate warm-up")
    lr_warmup_start: float = _optimization(
        0.0, "warm-up starts at this fraction of lr, in [0, 1] (authors: 0.05)")
    lr_min: float = _optimization(
        0.0, "cosine: the floor the learning rate decays to, in [0, lr) (authors: 1e-5)")
    grad_clip: float = _optimization(1.0, "clip the gradient norm to this (0: no clipping)")
    mixed_precision: str = _optimization(
        "no", "no | fp16 | bf16 | auto (bf16 where the CPU or GPU multiplies it natively, else no); "
              "unset: accelerate launch --mixed_precision")
    last_position_only: bool = _optimization(
        False, "paper/gpt2: loss and answers from the last position only")
    seed: int = _optimization(0, "seed of the model's init and the batch order")
    n_probes: int = _probes(12, "log-spaced probe steps, step 0 and the last included")
    n_eval: int = _probes(2000, "training samples scored for acc_train and train_loss")
    merge_steps: list[float] = _probes(
        None, "with merge_probe, also merge at these steps (each: the first probe step at or after it, "
              "if any)",
        factory=list)


@dataclass
class RunKeys(AnalysisKeys, TrainingKeys):
    """Every setting of one run and the experiment-level keys, each with its help (field
    metadata): ``TrainingKeys``' fields, then ``AnalysisKeys``'. Instantiate ``RunConfig``, which
    adds the run id and the task's options."""


@dataclass
class ProbeKeys(AnalysisKeys, ThreadKeys):
    """The keys of ``probe`` (alias ``--checkpoint``) and ``align``: ``ThreadKeys``',
    ``AnalysisKeys``' and the checkpoints' own (``PROBE_KEYS`` and ``ALIGN_KEYS`` say which each
    command takes)."""

    checkpoint: list[str] = _checkpoints(
        None, "a save_pretrained folder, a folder of checkpoint-N / step_N folders (a series), "
              "gguf:FILE or gguf:smollm2, or a hub id when online; several: repeat it or a,b",
        factory=list)
    output_dir: str = _checkpoints("reports/checkpoints", "where the CSVs and figures go")
    reference: str | None = _checkpoints(
        None, "a step-0 or base checkpoint of the same architecture: adds rd and angle_mean / "
              "_median / _max of each weight-basis unit set from it")
    probe_inputs: str | None = _checkpoints(
        None, "activation basis too: a task name (this project's models), a text file of lines "
              "(language models) or a folder of images (vision models)")
    probe_samples: int = _checkpoints(1024, "samples (tokens, pixel positions, rows) in the probe batch")
    activation_point: str = _checkpoints(
        "pre", "activation basis: pre (projection outputs) | post (MLP neurons after their "
               "nonlinearity); dead units are counted either way", choices=ACTIVATION_POINTS)
    fold_norms: bool = _checkpoints(
        True, "weight basis: fold the gain (and bias) of the norm a projection reads into its rows, "
              "as TransformerLens's fold_ln")
    spectral_metrics: bool | str = _checkpoints(
        True, "stable_rank, effective_rank (and a Linear weight's stable_rank_weight, alpha); "
              "stable: the stable ranks alone, without the spectrum (a fraction of the time on "
              "large layers); false: none", choices=SPECTRAL_CHOICES)
    allow_pickle: bool = _checkpoints(
        False, "accept pytorch_model.bin weights (pickle can run code: trusted files only)")
    trust_remote_code: bool = _checkpoints(
        False, "run the model code a checkpoint ships (trusted checkpoints only)")
    heatmap_layers: list[int] | None = _checkpoints(
        None, "layers drawn as heat maps (null: first, middle and last)")
    heatmap_component: str | None = _checkpoints(
        None, "component drawn (null: attn.q, else the first component)")
    threshold: float | None = _checkpoints(
        None, "merge: the cosine in (0, 1) at which every condensed group is merged into one unit")


@dataclass
class TableKeys:
    """The keys of ``table`` (``probes.report.split_table``)."""

    out: str | None = dataclasses.field(default=None, metadata={
        "help": "write the Markdown here (atomically) instead of stdout"})
    min_seeds: int = dataclasses.field(default=3, metadata={
        "help": "fitted seeds the split rule needs at each end"})
    correlations: str | None = dataclasses.field(default=None, metadata={
        "help": "write every row of the relation (Spearman of final condensation against the ood "
                "shares, bootstrap 95% intervals) here as CSV"})
    figure: str | None = dataclasses.field(default=None, metadata={
        "help": "draw the runs' ood shares over training here (PNG; against samples seen when "
                "every run records its batch_size)"})


@dataclass
class LogKeys:
    """Messages and progress bars, taken off every command's line by ``probes/run.py``
    (``probes.logs`` shows them)."""

    log_level: str = dataclasses.field(default="info", metadata={
        "help": "messages shown on stderr (the error: line of bad input at every level)",
        "choices": LOG_LEVELS})
    progress: bool | None = dataclasses.field(default=None, metadata={
        "help": "progress bars (null: on a terminal only)"})


@dataclass
class ConvertKeys:
    """``convert`` takes its two positional arguments (SRC OUT_DIR) and no key."""


def thresholds_problem(thresholds: list) -> str | None:
    """Why ``thresholds`` (a list of numbers) is refused, as an error line, or None: every
    command takes distinct numbers in (0, 1) (a repeated one would give its rows twice)."""
    if not thresholds or not all(0 < t < 1 for t in thresholds):
        return f"thresholds={thresholds} is invalid: accepted are numbers in (0, 1)"
    if len(set(thresholds)) < len(thresholds):
        return f"thresholds={thresholds} repeats a value: accepted are distinct numbers in (0, 1)"
    return None


def keys_in(section: str) -> tuple[str, ...]:
    """The keys of ``section`` (one of the section names above), in field order."""
    return tuple(f.name for f in dataclasses.fields(RunKeys) if f.metadata["section"] == section)


# the options of the tasks' generators: their values and defaults belong to the task dataclasses
# (probes.config.run_config.RunConfig fills them in); the command line knows their names and types
TASK_OPTION_KEYS = keys_in(TASK_OPTIONS)
# keys of the experiment, not of a run: never part of a run's identity
EXPERIMENT_KEYS = keys_in(EXPERIMENT)
# what is measured of a trained model: changing one re-measures finished runs from their saved
# checkpoints (probes.train.remeasure), never retrains them. n_probes also sets which steps a
# new run saves; a finished run is measured at the steps it saved.
ANALYSIS_KEYS = keys_in(PROBES)
# what `measure DIR` takes: the analysis settings and the thread count
MEASURE_KEYS = (*ANALYSIS_KEYS, "num_threads")
# what `probe` (alias --checkpoint) and `align A B` take, in the order their --help lists them
PROBE_KEYS = ("checkpoint", "output_dir", "reference", "probe_inputs", "probe_samples",
              "activation_point", "fold_norms", "spectral_metrics", "thresholds", "merge_probe",
              "chance_draws", "chance_nulls", "heatmap_layers", "heatmap_component", "allow_pickle",
              "trust_remote_code", "num_threads")
ALIGN_KEYS = ("output_dir", "thresholds", "probe_inputs", "probe_samples", "activation_point",
              "fold_norms", "allow_pickle", "trust_remote_code", "num_threads")
MERGE_KEYS = ("threshold", "output_dir", "fold_norms", "allow_pickle", "trust_remote_code",
              "num_threads")
# one value for the whole experiment: one Accelerator per process, one analysis of its runs
SHARED_KEYS = (*EXPERIMENT_KEYS, "mixed_precision", *ANALYSIS_KEYS)
# keys whose values are lists by nature: a list there is never a grid
LIST_KEYS = {k for k, tp in hints(RunKeys).items() if list_item(tp) is not None}
# the keys a list of values expands into a grid of runs: every other key of a run
GRID_KEYS = tuple(f.name for f in dataclasses.fields(RunKeys)
                  if f.name not in SHARED_KEYS and f.name not in LIST_KEYS)
