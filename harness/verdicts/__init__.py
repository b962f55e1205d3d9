"""Stage 5: the check results: one module per check, named after it, the feature models they use, CheckResult."""
