"""The check modules the plugin collects with `--adapter`: one short test per check, parametrized by adapter."""
