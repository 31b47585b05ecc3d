"""The training harness: config, loop, evaluation, runs, distributed data parallel, the probe, and the
offline model's recipe. Uses the core library only (no figures, no UI): it yields records and numbers."""
