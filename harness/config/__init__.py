"""Stage 1: the run's settings: options, the resolved HarnessConfig, shards, the check registry and the hookspecs."""
