"""The model server: alias-aware model pool, weighted routing, batching, cache, feedback."""
