"""The run that drives the stages: the session, the reference control, --compare-to, records, shard merging."""
