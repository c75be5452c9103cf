"""Training: the thin seam between the model and PyTorch's distributed engine (torchrun, FSDP2, DCP).

- loss.py        chunked cross-entropy and token log-probs from hidden states through the tied output matrix,
                 never the full (B, T, V) float32 logits
- optim.py       AdamW with decay / no-decay groups; warmup + cosine / WSD / constant schedules as pure functions

To come (issue 16): dist.py (torchrun init, meta build, fully_shard, mixed precision), checkpoint.py (DCP,
exact resume, HF export), metrics.py (JSONL, MFU, loss curves).
"""
