"""Task generators. Each returns a ``datasets.DatasetDict`` (train, test_id, ood) and scores
predictions against its candidate targets. ``TASKS`` maps a config's ``task`` name to its class."""

from tasks.composite import CompositeTask

TASKS = {"composite": CompositeTask}


def make_task(name: str, **options):
    """Build the task called ``name`` with its options (the task class's fields).

    Raises:
        ValueError: if ``name`` is not a registered task.
    """
    if name not in TASKS:
        raise ValueError(f"task={name!r} is unknown: accepted are {sorted(TASKS)}")
    return TASKS[name](**options)


__all__ = ["TASKS", "CompositeTask", "make_task"]
