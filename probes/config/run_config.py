"""RunConfig: every setting of one run, its identity (the run id) and the experiment-level keys."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from models.mlp import ntk_scale
from tasks import TASKS

# the presets (configs/*.yaml), shipped as package data: probes/presets is a link to configs/
PRESETS = resources.files("probes") / "presets"
DEFAULT_CONFIG = PRESETS / "default.yaml"


class ConfigError(ValueError):
    """Bad configuration: the message names the bad value and what is accepted."""


@dataclass
class RunConfig:
    """Every setting of one run, and the experiment-level keys (marked in comments)."""

    # experiment level (not part of a run's identity)
    experiment: str = "default"  # the experiment's name: its output folder and runs.csv column
    output_dir: str | None = None  # default: reports/<experiment>
    overwrite: bool = False  # retrain runs whose results exist
    num_threads: int | None = None  # torch threads per process; default: all cores / processes
    save_checkpoints: str = "probes"  # probes (the model at each probe step) | final | none
    save_every: int = 500  # steps between resumable training states (0: none)
    report_only: bool = False  # write the reports of the finished runs, train nothing
    log_every: int = 10  # steps between rows of runs/<run_id>/train_log.csv (0: no log)
    reference_trajectories: str | None = None  # CSV (gamma, step, scores) drawn beside the runs;
    # in a config file, a relative path is found beside the file first
    trajectory_axis: str = "step"  # ood_over_training's x axis: step | samples (step x batch)
    # task
    task: str = "composite"  # the task (tasks.TASKS): composite, identity, sine, images, ...
    seq_len: int = 9  # tokens per sequence
    split_modulus: int = 7  # composite: key/position split modulus (7 = n - 2 as in the paper)
    n_train: int = 20000  # training samples (a fixed set, trained for epochs)
    n_test_id: int = 2000  # in-distribution test samples
    n_ood: int = 2000  # out-of-distribution (held-out) samples
    data_seed: int = 0  # seed of the task's data (the model's is seed)
    fresh_samples: bool = False  # draw a new training batch every step instead of epochs
    in_dim: int = 1  # regression tasks: input dimension (four_points: 1)
    image_source: str = "digits"  # images task: digits | mnist5k | path to an .npz file
    image_size: int = 32  # images task: side of the resized square images
    test_fraction: float = 0.2  # images task: held-out share
    key_low: int = 20  # keys and noise are drawn from [key_low, key_high]
    key_high: int = 99  # upper end of the key range
    # options of the other tasks (None: the task's own default); lists are strings like "34,43"
    held_out: str | int | None = None  # composite_no_twist / multi_anchor: held-out anchor pairs
    ood_key_position: int | None = None  # identity: the key position kept for ood
    ood_hops: str | int | None = None  # chain_search: step sizes held out for ood
    n_chains: int = 2  # chain_search
    chain_len: int = 8  # chain_search
    n_hop_anchors: int = 3  # chain_search
    ood_scoring: str = "authors"  # composite, composite_no_twist, multi_anchor: authors | pooled
    hops: int | None = None  # chain_search_authors: hops k from start to target (None: 2)
    chain_nodes: int | None = None  # chain_search_authors: nodes of the chain (None: 7)
    # model
    model_family: str = "paper"  # paper | gpt2 | mlp | resnet
    n_layer: int = 2  # transformer blocks
    n_head: int = 1  # attention heads (must divide n_embd)
    n_embd: int = 64  # model width d_model
    d_ff: int | None = None  # MLP width (None: 3 n_embd for paper, 4 n_embd for gpt2)
    vocab_size: int = 128  # token vocabulary size
    dropout: float = 0.0  # dropout probability
    head_bias: bool = False  # paper: a bias on the output head (PyTorch's default init, kept)
    width: int = 100  # mlp: hidden neurons m
    activation: str = "relu"  # mlp: relu | tanh | sigmoid | softplus | xtanh
    # initialization rate: std = d_in^-gamma; a part's own gamma overrides when set
    gamma: float = 0.5  # init rate: std = d_in^-gamma, in (0, 3] (mlp: the phase gamma, in (0, 6])
    gamma_embedding: float | None = None  # the embeddings' own init rate (None: gamma)
    gamma_attention: float | None = None  # the attention's own init rate (None: gamma)
    gamma_mlp: float | None = None  # the MLPs' own init rate (None: gamma)
    gamma_head: float | None = None  # the output head's own init rate (None: gamma)
    gamma_prime: float = 0.0  # mlp: std of a = m^-(gamma+gamma')/2, of (w, b) = m^-(gamma-gamma')/2
    # optimization
    optimizer: str = "adamw"  # adamw | adam | sgd (full-batch GD: sgd with batch_size >= n_train)
    lr_schedule: str = "cosine"  # cosine | constant (both after warmup_steps of linear warm-up)
    lr_scaling: str = "none"  # mlp: none | ntk (lr divided by max(1, the tangent kernel's scale))
    steps: int = 2000  # optimizer steps
    batch_size: int = 512  # samples per step
    lr: float = 1e-3  # peak learning rate
    weight_decay: float = 0.01  # weight decay (decoupled for adamw, L2 otherwise)
    warmup_steps: int = 100  # steps of linear learning-rate warm-up
    lr_warmup_start: float = 0.0  # warm-up starts at this fraction of lr, in [0, 1] (authors: 0.05)
    lr_min: float = 0.0  # cosine: the floor the learning rate decays to, in [0, lr) (authors: 1e-5)
    grad_clip: float = 1.0  # clip the gradient norm to this (0: no clipping)
    mixed_precision: str = "no"  # no | fp16 | bf16; unset: accelerate launch --mixed_precision
    last_position_only: bool = False  # paper/gpt2: loss and answers from the last position only
    seed: int = 0  # seed of the model's init and the batch order
    # probes
    n_probes: int = 12  # log-spaced probe steps, step 0 and the last included
    n_eval: int = 2000  # training samples scored for acc_train and train_loss
    merge_probe: bool = False  # at the final probe, merge each layer's condensed groups and score it
    # with merge_probe, also merge at these steps (each: the first probe step at or after it, if any)
    merge_steps: list[float] = field(default_factory=list)
    # cosine thresholds tau of the group counts (a list by nature: never a grid, as merge_steps)
    thresholds: list[float] = field(default_factory=lambda: [0.7, 0.9, 0.95, 0.99])

    @property
    def part_gammas(self) -> dict[str, float | None]:
        """Per-part init rates: embedding, attention, mlp, head -> gamma or None (use gamma)."""
        return {p: getattr(self, f"gamma_{p}") for p in ("embedding", "attention", "mlp", "head")}

    @property
    def out_dir(self) -> Path:
        """The experiment's output folder: output_dir, else reports/<experiment>."""
        return Path(self.output_dir or Path("reports") / self.experiment)

    def identity(self) -> dict:
        """The settings that make the trained model what it is: the task and the options its
        generator reads, the keys its model family reads, the init rates, optimization, data
        order and precision (``training_keys``). Analysis keys (``ANALYSIS_KEYS``: what is
        measured of the trained model) and experiment keys never enter, nor does a key the run's
        task or model family does not read."""
        d = dataclasses.asdict(self)
        return {k: d[k] for k in training_keys(self)}

    @property
    def run_id(self) -> str:
        """Stable, readable id: family, gamma, seed and a hash of the identity settings."""
        digest = hashlib.sha1(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:8]
        return f"{self.model_family}-g{self.gamma:g}-s{self.seed}-{digest}"

    def analysis(self) -> dict:
        """The analysis settings (``ANALYSIS_KEYS``): what a run's checkpoint series is measured
        with. Changing them re-measures a finished run; it never retrains it."""
        return {k: getattr(self, k) for k in ANALYSIS_KEYS}

    def task_options(self) -> dict:
        """Options of the task generator: the config keys its dataclass has (data_seed -> seed)."""
        names = {f.name for f in dataclasses.fields(TASKS[self.task])}
        options = {k: v for k, v in dataclasses.asdict(self).items() if k in names and k != "seed"}
        if "seed" in names:
            options["seed"] = self.data_seed
        return options


EXPERIMENT_KEYS = ("experiment", "output_dir", "overwrite", "num_threads", "save_checkpoints",
                   "save_every", "report_only", "log_every", "reference_trajectories",
                   "trajectory_axis")
# what is measured of a trained model: changing one re-measures finished runs from their saved
# checkpoints (probes.train.remeasure), never retrains them. n_probes also sets which steps a
# new run saves; a finished run is measured at the steps it saved.
ANALYSIS_KEYS = ("n_probes", "n_eval", "merge_probe", "merge_steps", "thresholds")
FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}
# keys every run's training reads, whatever its task and family (task options come from the
# task's dataclass, the family's from FAMILY_TRAINING_KEYS)
COMMON_TRAINING_KEYS = ("task", "data_seed", "fresh_samples", "model_family", "gamma", "dropout",
                        "optimizer", "lr_schedule", "steps", "batch_size", "lr", "weight_decay",
                        "warmup_steps", "lr_warmup_start", "grad_clip", "mixed_precision", "seed")
PART_GAMMAS = ("gamma_embedding", "gamma_attention", "gamma_mlp", "gamma_head")
LM_KEYS = ("n_layer", "n_head", "n_embd", "d_ff", "vocab_size", "last_position_only", *PART_GAMMAS)
FAMILY_TRAINING_KEYS = {"paper": (*LM_KEYS, "head_bias"), "gpt2": LM_KEYS,
                        "mlp": ("width", "activation", "gamma_prime", "lr_scaling"),
                        "resnet": PART_GAMMAS}


def training_keys(cfg: RunConfig) -> list[str]:
    """The keys that the training of ``cfg`` reads, sorted: ``COMMON_TRAINING_KEYS``, the options
    of its task's generator (``data_seed`` is the generator's seed), its family's keys, and
    ``lr_min`` under the cosine schedule only (the constant one never reads it)."""
    keys = set(COMMON_TRAINING_KEYS) | set(FAMILY_TRAINING_KEYS[cfg.model_family])
    keys |= {f.name for f in dataclasses.fields(TASKS[cfg.task]) if f.name != "seed"}
    if cfg.lr_schedule == "cosine":
        keys.add("lr_min")
    return sorted(keys)


# one value for the whole experiment: one Accelerator per process, one analysis of its runs
SHARED_KEYS = (*EXPERIMENT_KEYS, "mixed_precision", *ANALYSIS_KEYS)
PRECISIONS = ("no", "fp16", "bf16")
SAVE_CHECKPOINTS = ("probes", "final", "none")
TRAJECTORY_AXES = ("step", "samples")
OPTIMIZERS = ("adamw", "adam", "sgd")
LR_SCHEDULES = ("cosine", "constant")
LR_SCALINGS = ("none", "ntk")
HINTS = typing.get_type_hints(RunConfig)
LIST_KEYS = {"thresholds", "merge_steps"}


def resolved_yaml(cfg: RunConfig, extra: dict | None = None) -> str:
    """The YAML text of a run's full resolved config (plus ``extra``, e.g. the init records)."""
    data = dataclasses.asdict(cfg) | {"run_id": cfg.run_id} | (extra or {})
    return yaml.safe_dump(data, sort_keys=False)


def merge_at(cfg: RunConfig, steps) -> set[int]:
    """The probe steps at which the merge probe runs (``probes.measure.merge_probe``).

    Args:
        cfg: the run's config; steps: the steps its models are measured at (the probe schedule
            in training, the saved checkpoints when measured again).

    Returns:
        the empty set without ``merge_probe``; else ``cfg.steps`` (the last step) and, for each
        value s of ``merge_steps``, the first of ``steps`` at or after s (none when s is past
        them all).
    """
    if not cfg.merge_probe:
        return set()
    steps = sorted(int(s) for s in steps)
    chosen = {cfg.steps}
    for wanted in cfg.merge_steps:
        later = [s for s in steps if s >= wanted]
        if later:
            chosen.add(later[0])
    return chosen


def effective_lr(cfg: RunConfig) -> float:
    """The learning rate the optimizer gets: ``cfg.lr``, divided by max(1, the tangent kernel's
    scale m (beta1^2 + beta2^2) / 2) under ``lr_scaling: ntk`` (mlp; models.mlp.ntk_scale)."""
    if cfg.lr_scaling == "ntk":
        return cfg.lr / max(1.0, ntk_scale(cfg.width, cfg.gamma, cfg.gamma_prime))
    return cfg.lr

