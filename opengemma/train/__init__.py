"""Training: the thin seam between the model and PyTorch's distributed engine (torchrun, FSDP2, DCP).

- dist.py        torchrun's environment, meta-device build, fully_shard per block then root, bf16 mixed precision,
                 activation checkpointing and torch.compile per block, rank-0 init broadcast to the shards
- optim.py       AdamW with decay / no-decay groups; warmup + cosine / WSD / constant schedules as pure functions
- loss.py        chunked cross-entropy and token log-probs from hidden states through the tied output matrix,
                 never the full (B, T, V) float32 logits
- checkpoint.py  DCP checkpoints of model, optimizer, data position and RNGs; atomic; export to Hugging Face layout
- metrics.py     FLOPs per token (PaLM), measured peak and MFU, metrics.jsonl, progress bar, loss PNG
- settings.py    a recipe's settings: TOML values and flags
The loop itself lives in the recipes (opengemma/recipes/pretrain.py), as a plain script.
"""
