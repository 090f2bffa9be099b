"""Figures: ``common`` (shared pieces), ``experiment`` (reasoning experiments), ``baselines`` (the
mlp and resnet families) and ``checkpoint`` (checkpoints on disk)."""
