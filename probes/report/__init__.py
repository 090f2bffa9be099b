"""Reports from CSVs: ``tables`` (correlations, phase diagram, baseline tables), ``experiment`` and
``checkpoint`` (what each entry path writes and prints), ``split_table`` (the symmetric /
inferential split as Markdown) and ``figures``. Nothing here measures a model."""
