"""Stage 2: the base model: resolve and load it (Hub folder, single file, embedded tiny twins), families, digests."""
