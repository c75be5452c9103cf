"""Training: the thin seam between the model and PyTorch's distributed engine (torchrun, FSDP2, DCP).

- loss.py        chunked cross-entropy and token log-probs from hidden states through the tied output matrix,
                 never the full (B, T, V) float32 logits

To come (issue 16): dist.py (torchrun init, meta build, fully_shard, mixed precision), optim.py (AdamW groups,
schedules), checkpoint.py (DCP, exact resume, HF export), metrics.py (JSONL, MFU, loss curves).
"""
