"""Reports: the results table every output is rendered from (results.json first)."""
