"""The public Python API, on top of every other room: ``measure`` (``probes.api.measure``: a live
model, a checkpoint folder or a run's checkpoint series -> metrics.csv rows, through the
checkpoint probe's ``Prober``), the live model's plan (``probes.api.live``) and
``CondensationCallback`` (``probes.api.callback``: condensation during a ``transformers.Trainer``
run). ``probes/__init__.py`` exposes them lazily; nothing here is imported before first use."""
