"""Task generators. ``TASKS`` maps a config's ``task`` name to its class.

A task is a dataclass (its fields are config keys; ``seed`` is fed from ``data_seed``) with:
- ``build() -> datasets.DatasetDict`` with splits ``train``, ``test_id``, ``ood``; columns
  ``input_ids`` (n, seq_len) int64 and ``target`` (n,) int64 (the token to predict at the last
  position), plus the task's own columns (``key``, candidate targets, ...);
- ``seq_len`` (tokens per sample) and ``vocab_min_size`` (smallest vocabulary that holds every
  token and target);
- ``train_sampler(rng, n) -> dict`` of numpy columns: fresh training samples;
- ``score_names`` (the scores ``reasoning_metrics`` returns, in runs.csv order), ``ood_scores``
  (those correlated with condensation), ``reasoning_metrics(preds, data) -> dict``,
  ``ood_offsets(pred, ood) -> dict[int, int]`` and ``fitted(scores) -> bool``.
"""

from tasks.anchor_pairs import CompositeNoTwistTask, MultiAnchorTask
from tasks.chain_search import ChainSearchHopsTask, ChainSearchTask
from tasks.chain_search_authors import ChainSearchAuthorsTask
from tasks.composite import CompositeTask
from tasks.identity import IdentityTask

TASKS = {
    "composite": CompositeTask,
    "composite_no_twist": CompositeNoTwistTask,
    "multi_anchor": MultiAnchorTask,
    "identity": IdentityTask,
    "chain_search_authors": ChainSearchAuthorsTask,  # arXiv 2405.15302 as the authors generate it
    "chain_search_hops": ChainSearchHopsTask,  # the suite's variant with hop anchors
    # the variant's first name, kept so that existing configs and run ids stay valid
    "chain_search": ChainSearchTask,
}

# the baselines' tasks: regression targets and flattened images for the mlp family, images for
# the resnet family
from tasks.flat_images import FlatImageTask  # noqa: E402
from tasks.functions import FourPointsTask, SineTask, SinSumTask  # noqa: E402
from tasks.images import ImageTask  # noqa: E402

TASKS |= {"four_points": FourPointsTask, "sine": SineTask, "sin_sum": SinSumTask,
          "images": ImageTask, "images_flat": FlatImageTask}


def make_task(name: str, **options):
    """Build the task called ``name`` with its options (the task class's fields).

    Raises:
        ValueError: if ``name`` is not a registered task.
    """
    if name not in TASKS:
        raise ValueError(f"task={name!r} is unknown: accepted are {sorted(TASKS)}")
    return TASKS[name](**options)


__all__ = ["TASKS", "ChainSearchAuthorsTask", "ChainSearchHopsTask", "ChainSearchTask",
           "CompositeNoTwistTask", "CompositeTask", "IdentityTask",
           "MultiAnchorTask", "make_task"]
