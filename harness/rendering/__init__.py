"""Stage 4: the renders: what the checks need, the renderer, its caches, pictures and progress."""
