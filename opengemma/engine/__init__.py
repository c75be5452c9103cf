"""Inference on token ids: sampling (pure functions) and generation loops. Knows nothing of text."""
