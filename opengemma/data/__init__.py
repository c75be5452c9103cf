"""The pretraining data pipeline: raw text in, decontaminated, deduplicated token shards and a staged mixture out.

Modules, in the order data flows through them:
- readers.py     Document records from text, JSONL, Parquet (gzip/zstd too), streamed; bad lines counted, located
- filters.py     quality filters (Gopher quality and repetition, FineWeb, C4 bad words, a model score), each a
                 named stage giving a reason per document it drops
- dedup.py       exact (normalized content hash) and near-duplicate (MinHash LSH) removal, in sharded stages
- pii.py         the one detector of personal data (the eval side's memorization study uses it too), redaction
- decontam.py    n-gram decontamination against evaluation texts the caller hands in; the contamination report
- tokenizer_train.py  a SentencePiece model with Gemma's choices
- shards.py      uint32 token shards with document boundaries, checksums and a manifest; resumable
- mixture.py     staged mixtures (TOML) and their deterministic, resumable sampler
- config.py      the pipeline's settings (TOML values, flags)
- stages.py, pipeline.py, report.py   `opengemma data prepare`: the stages' bodies, the run (process pool,
                 resumption), report.json/md/png
- scale.py       the same stages as datatrove pipeline steps, for Slurm or Ray clusters (optional extra)
- instructions.py, sft_tasks.py, openai_evals.py, sft_build.py   `opengemma data build-sft`: verifiable
                 (IFEval-style) instructions attached to generated questions and OpenAI evals registry records, the
                 SFT conversations with held-out questions and held-out instruction kinds, decontaminated

The package imports the tokenizer only (and the atomic-write leaf): never the model, the engine, training or
eval (the caller passes eval texts in), so it runs on machines without torch's heavy parts in play.
"""
