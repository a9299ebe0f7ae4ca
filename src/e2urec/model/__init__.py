"""The backbone language model (loading by name) and how its answer-position outputs are read."""
