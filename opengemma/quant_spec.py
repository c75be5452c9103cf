"""The quantization policy, resolved once: the modes and embedding formats there are, what "auto" and
"default" mean, and the QuantSpec that the loader's cache, quantize.py and the CLI's help all read. No torch
(the CLI lists these choices without importing it)."""

from __future__ import annotations

from dataclasses import dataclass, replace

QUANT_MODES = ("int8", "int4", "gguf")  # gguf: keep a GGUF file's own quantization, matrix by matrix
EMBEDDING_MODES = ("float", "int8", "int4", "int4+int8")  # int4+int8: quantize.RescoredEmbedding
INT4_METHODS = ("auto", "gptq", "rtn")
# "auto" rounds with GPTQ on a GPU or under this many parameters: calibrating (a float32 forward over 32k
# tokens) took ~1.5 min for 270M parameters on 2 CPU cores and grows with size
AUTO_GPTQ_MAX_PARAMS = 1_000_000_000
GGUF_GROUP = 32  # the weights per scale of a GGUF file's 4-bit blocks (Q4_0, Q4_1, Q4_K)


def default_embedding(mode: str) -> str:
    """The tied embedding/output table is the most sensitive matrix: int4 there costs +4-6 points of perplexity
    on the default model (benchmarks/quality.py), so it stays int8; int4 mode adds the int4 copy that makes
    decode read half of it (the int8 layer's top logits at int4 speed). gguf: as the file has it ("file")."""
    return {"int4": "int4+int8", "gguf": "file"}.get(mode, "int8")


def canonical_embedding(embedding: str | None) -> str:
    """One spelling per choice: None (the Python API's float) -> "float"; "default" stays until resolved
    ("file", gguf mode's own embedding type, is what resolution makes of it, never a user's word)."""
    e = "float" if embedding is None else embedding
    if e not in (*EMBEDDING_MODES, "default"):
        raise ValueError(
            f"unknown embedding quantization {embedding!r}; choose from {', '.join(EMBEDDING_MODES)} or default"
        )
    return e


@dataclass(frozen=True)
class QuantSpec:
    """One resolved choice of weight-only quantization: every field is final (no "auto", no "default")."""

    mode: str  # int8 | int4 | gguf
    group_size: int = 32  # int4 groups (a GGUF file's blocks: 32)
    embedding: str = "int8"  # float | int8 | int4 | int4+int8 | file (gguf: the file's own type)
    int4_method: str = "rtn"  # gptq | rtn: how every matrix rounded to int4 is rounded
    keep_file_int4: bool = False  # take a GGUF file's 4-bit blocks as they are instead of rounding again

    @property
    def rounds_int4(self) -> bool:
        """Whether some matrix is rounded to int4 groups here (not only taken from the file)."""
        return self.mode == "int4" or self.embedding in ("int4", "int4+int8")

    @property
    def gptq(self) -> bool:
        return self.rounds_int4 and self.int4_method == "gptq"

    def tag(self, calibration_id: str) -> str:
        """The part of a quantized cache directory's name that tells two specs apart."""
        t = self.mode + (f"-g{self.group_size}" if self.rounds_int4 else "")
        t += f"-gptq-{calibration_id}" if self.gptq else ""
        return t + ("-q4kept" if self.keep_file_int4 else "") + f"-emb{self.embedding}"

    def without_gptq(self) -> "QuantSpec":
        return replace(self, int4_method="rtn")


def validate(quantize: str | None, embedding: str | None = "default", int4_method: str = "auto") -> None:
    """The words' spelling alone (no model needed): a clear error before anything is loaded or converted."""
    if quantize is not None and quantize not in (*QUANT_MODES, "auto"):
        raise ValueError(f"unknown quantization {quantize!r}; choose from {', '.join(QUANT_MODES)} or auto")
    if int4_method not in INT4_METHODS:
        raise ValueError(f"unknown int4 method {int4_method!r}; choose from {', '.join(INT4_METHODS)}")
    canonical_embedding(embedding)


def resolve(
    quantize: str | None,
    group_size: int = 32,
    embedding: str | None = "default",
    int4_method: str = "auto",
    *,
    num_params: int | None = None,
    on_gpu: bool = False,
    from_gguf: bool = False,
) -> QuantSpec | None:
    """The user's words -> a QuantSpec, or None for float weights.

    quantize: None, "int8", "int4", "gguf", or "auto": a GGUF source's own quantization with the int4+int8
    output layer on CPU (decode 1.00x-1.16x llama.cpp across hosts, perplexity within 0.6% of float:
    docs/benchmarks.md, docs/quantization.md),
    int8 for other CPU sources, float (bfloat16) on a GPU. embedding: EMBEDDING_MODES or "default" (the
    mode's own, default_embedding). from_gguf: the weights come from a GGUF file that is still there.
    num_params: the model's size, for int4_method "auto" (GPTQ on a GPU or under AUTO_GPTQ_MAX_PARAMS)."""
    validate(quantize, embedding, int4_method)
    if quantize == "auto":
        if on_gpu:
            return None
        quantize = "gguf" if from_gguf else "int8"
        if from_gguf and embedding == "default":
            embedding = "int4+int8"
    if quantize is None:
        return None
    embedding = canonical_embedding(embedding)
    if quantize == "gguf":
        if not from_gguf:
            raise ValueError(
                "quantize='gguf' keeps a GGUF file's own quantization, but this model was not made "
                "from a GGUF file (or the file has moved): use int8 or int4"
            )
        group_size = GGUF_GROUP  # the embedding too is as the file has it, unless asked otherwise
    if embedding == "default":
        embedding = default_embedding(quantize)
    spec = QuantSpec(quantize, group_size, embedding)
    if spec.rounds_int4 and int4_method == "auto":
        small = num_params is not None and num_params < AUTO_GPTQ_MAX_PARAMS
        int4_method = "gptq" if on_gpu or small else "rtn"
    keep = from_gguf and group_size == GGUF_GROUP and (quantize == "gguf" or spec.rounds_int4)
    return replace(spec, int4_method=int4_method if spec.rounds_int4 else "rtn", keep_file_int4=keep)
