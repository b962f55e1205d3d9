"""Stage 3: the adapter: read and validate the file, map its layout, inject it, and prove what was applied."""
