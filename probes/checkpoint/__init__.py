"""Models on disk: ``cli`` (the ``--checkpoint`` command line), ``discover`` (finding, checking and
reading checkpoints), ``probe`` (planning and measuring them), ``inputs`` (the activation basis's
probe batch) and ``gguf`` (GGUF files)."""
