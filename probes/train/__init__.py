"""Training a grid with accelerate: ``experiment`` (the main loop over runs), ``loop`` (one run:
build, train, probe) and ``resume`` (mid-run state)."""
