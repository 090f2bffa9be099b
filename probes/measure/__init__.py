"""Measuring: what a unit is and how condensed a set of units is. No files, no command line.

Calling this package, ``probes.measure(model_or_path, ...)``, runs the public API's
``probes.api.measure.measure`` (probes/__init__.py makes it callable: the package would shadow a
function of its name). Keep this file free of imports, so that ``import probes`` stays cheap.

- ``arch``: one file per architecture: which projections give which unit components, where
  ``merge`` merges and which norms fold (one registry of model types);
- ``units``: unit rows from weights (live models, tensor sources on disk), per layer and head;
- ``family_units``: the extra unit sets of the baseline families (ResNet classifier, the two-layer
  net's active neurons) and the 1-D net's per-neuron features;
- ``metrics``: ``Condensation`` (cosine, condensed groups, ranks), ``relative_distance``,
  ``metric_rows`` (the metrics.csv rows of a fit, shared by training and checkpoint probing);
- ``capture``: activations with forward hooks (the activation basis);
- ``neurons``: directions of a 1-D two-layer net, their closed-form prediction and the end of
  the initial stage;
- ``lineage``: how condensed groups are born, split, merge and die from one probe step to the
  next, and the trend of the group count over training;
- ``alignment``: Hungarian matching of group centroids, and linear CKA (biased and debiased)
  between activations;
- ``drift``: how far a unit set moved from a reference: ``rd`` and each unit's angle.
"""
