"""Hugging Face layout directories (config.json + safetensors [+ index] + tokenizer files), both ways.

Reads GemmaForCausalLM, Gemma2ForCausalLM and Gemma3ForCausalLM (text) checkpoints; writes directories
that transformers loads back. Pickle checkpoints (pytorch_model.bin) are refused: never unpickle.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..atomic import atomic_path
from ..config import GemmaConfig
from ..model import Gemma
from . import CheckpointError, assign_state_dict, check_names, expand_map, meta_model
from .mmap import mmap_safetensors

# opengemma name <- Hugging Face name. Note the trap: in Gemma 1 "post_attention_layernorm" is the
# norm *before the MLP*; in Gemma 2/3 it normalizes the attention output and the pre-MLP norm is
# "pre_feedforward_layernorm".
HF_MAP = {
    "common": [
        ("embed.weight", "model.embed_tokens.weight"),
        ("norm.weight", "model.norm.weight"),
        ("lm_head.weight", "lm_head.weight"),
        ("layers.{i}.attn_norm.weight", "model.layers.{i}.input_layernorm.weight"),
        ("layers.{i}.attn.q_proj.weight", "model.layers.{i}.self_attn.q_proj.weight"),
        ("layers.{i}.attn.k_proj.weight", "model.layers.{i}.self_attn.k_proj.weight"),
        ("layers.{i}.attn.v_proj.weight", "model.layers.{i}.self_attn.v_proj.weight"),
        ("layers.{i}.attn.o_proj.weight", "model.layers.{i}.self_attn.o_proj.weight"),
        ("layers.{i}.mlp.gate_proj.weight", "model.layers.{i}.mlp.gate_proj.weight"),
        ("layers.{i}.mlp.up_proj.weight", "model.layers.{i}.mlp.up_proj.weight"),
        ("layers.{i}.mlp.down_proj.weight", "model.layers.{i}.mlp.down_proj.weight"),
    ],
    "plain_norms": [("layers.{i}.mlp_norm.weight", "model.layers.{i}.post_attention_layernorm.weight")],
    "sandwich_norms": [
        ("layers.{i}.post_attn_norm.weight", "model.layers.{i}.post_attention_layernorm.weight"),
        ("layers.{i}.mlp_norm.weight", "model.layers.{i}.pre_feedforward_layernorm.weight"),
        ("layers.{i}.post_mlp_norm.weight", "model.layers.{i}.post_feedforward_layernorm.weight"),
    ],
    "qk_norm": [
        ("layers.{i}.attn.q_norm.weight", "model.layers.{i}.self_attn.q_norm.weight"),
        ("layers.{i}.attn.k_norm.weight", "model.layers.{i}.self_attn.k_norm.weight"),
    ],
}

SUPPORTED_ARCHITECTURES = ("GemmaForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM")
# A reward model: the trunk plus a (num_labels, hidden) `score` layer read at the last non-padding token, in the
# layout of transformers' AutoModelForSequenceClassification (which TRL's RewardTrainer trains and reads)
SEQ_CLS_ARCHITECTURES = {
    "gemma": "GemmaForSequenceClassification",
    "gemma2": "Gemma2ForSequenceClassification",
    "gemma3": "Gemma3TextForSequenceClassification",
}
SCORE = "score.weight"
SHARD_BYTES = 4 * 2**30


def weight_map(cfg: GemmaConfig, model_keys) -> dict[str, str]:
    """{our_name: hf_name} for the tensors this config's model has."""
    template = list(HF_MAP["common"]) + HF_MAP["sandwich_norms" if cfg.sandwich_norms else "plain_norms"]
    if cfg.qk_norm:
        template += HF_MAP["qk_norm"]
    full = expand_map(template, cfg.n_layers)
    return {ours: theirs for ours, theirs in full.items() if ours in model_keys}


def _safetensors_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.exists():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index}: malformed safetensors index ({e})") from None
        files = [path / n for n in names]
        missing = [str(f) for f in files if not f.exists()]
        if missing:
            raise CheckpointError(f"{index} names shard files that do not exist: {', '.join(missing)}")
        return files
    single = path / "model.safetensors"
    if single.exists():
        return [single]
    if any(path.glob("*.bin")) or any(path.glob("*.pt")) or any(path.glob("*.pth")):
        raise CheckpointError(
            f"{path}: only pickle checkpoints (.bin/.pt) found; opengemma never unpickles "
            "files. Convert them to safetensors first."
        )
    raise CheckpointError(f"{path}: no model.safetensors or model.safetensors.index.json")


def read_config(path: str | Path, sequence_classification: bool = False) -> GemmaConfig:
    """The GemmaConfig of a Hugging Face directory: a causal LM, or with sequence_classification a reward model."""
    path = Path(path)
    supported = tuple(SEQ_CLS_ARCHITECTURES.values()) if sequence_classification else SUPPORTED_ARCHITECTURES
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise CheckpointError(f"{path}: no config.json (not a Hugging Face layout directory)")
    try:
        hf = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_file}: not valid JSON ({e})") from None
    archs = hf.get("architectures") or []
    if (archs or sequence_classification) and not any(a in supported for a in archs):
        raise CheckpointError(f"{cfg_file}: architecture {archs} not supported; supported: {', '.join(supported)}")
    try:
        cfg = GemmaConfig.from_hf_config(hf)
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{cfg_file}: {e}") from None
    cfg.name = path.name
    return cfg


def tensor_index(path: str | Path) -> dict[str, tuple[Path, tuple[int, ...], str]]:
    """{hf_name: (file, shape, dtype)} over all shards, without reading tensor data."""
    out = {}
    for f in _safetensors_files(Path(path)):
        try:
            with safe_open(f, framework="pt") as st:
                for name in st.keys():
                    sl = st.get_slice(name)
                    out[name] = (f, tuple(sl.get_shape()), sl.get_dtype())
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise CheckpointError(f"{f}: cannot read safetensors file ({e})") from None
    return out


def load_hf_dir(path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> Gemma:
    path = Path(path)
    return _load(path, read_config(path), tensor_index(path), dtype, device)


def load_hf_reward_dir(
    path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> tuple[Gemma, torch.Tensor]:
    """A *ForSequenceClassification directory: (the trunk as a Gemma, the score weight (num_labels, hidden))."""
    path = Path(path)
    cfg = read_config(path, sequence_classification=True)
    index = tensor_index(path)
    if SCORE not in index:
        raise CheckpointError(f"{path}: no {SCORE} (not a sequence-classification checkpoint)")
    f, _, _ = index.pop(SCORE)
    score = mmap_safetensors(f)[SCORE].to(device=device, dtype=torch.float32)
    return _load(path, cfg, index, dtype, device), score


def _load(path: Path, cfg: GemmaConfig, index: dict, dtype: torch.dtype, device) -> Gemma:
    model, expected = meta_model(cfg)
    wmap = weight_map(cfg, expected)
    # A tied checkpoint may still carry lm_head.weight (a copy of the embedding): transformers ignores it too.
    if cfg.tie_embeddings:
        index.pop("lm_head.weight", None)
    check_names({wmap[k]: s for k, s in expected.items()}, {k: v[1] for k, v in index.items()}, str(path))

    by_file: dict[Path, list[str]] = {}
    for ours, theirs in wmap.items():
        by_file.setdefault(index[theirs][0], []).append(ours)
    state = {}
    for f, names in by_file.items():
        tensors = mmap_safetensors(f)  # zero-copy: views of the file's memory map
        for ours in names:
            state[ours] = tensors[wmap[ours]].to(device=device, dtype=dtype)
    return assign_state_dict(model, state, device)


def save_hf_dir(
    model: Gemma, path: str | Path, tokenizer=None, dtype: torch.dtype | None = None, instruction_tuned: bool = False
) -> Path:
    """Write a Hugging Face layout directory that transformers' *ForCausalLM loads as it is. instruction_tuned: a
    chat model: the tokenizer config carries Gemma's chat template (which opengemma.load reads as "instruction
    tuned") and generation stops at <end_of_turn> too. A model with a reward head (`model.score`, rl/reward.py) is
    written as what transformers' AutoModelForSequenceClassification loads (no output layer; its head reads the last
    token that is not pad_token_id)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    state = model.state_dict()
    score = state.pop(SCORE, None)
    wmap = weight_map(cfg, state)
    hf_state = {wmap[k]: v.detach().to(dtype or v.dtype).contiguous().cpu() for k, v in state.items()}
    hf_cfg = cfg.to_hf_config()
    if score is not None:
        hf_state.pop("lm_head.weight", None)
        hf_state[SCORE] = score.detach().to(dtype or score.dtype).contiguous().cpu()
        hf_cfg["architectures"] = [SEQ_CLS_ARCHITECTURES[cfg.family]]
        hf_cfg["id2label"] = {str(i): f"LABEL_{i}" for i in range(score.shape[0])}
        hf_cfg["label2id"] = {f"LABEL_{i}": i for i in range(score.shape[0])}
    hf_cfg["torch_dtype"] = str(next(iter(hf_state.values())).dtype).removeprefix("torch.")
    hf_cfg["dtype"] = hf_cfg["torch_dtype"]

    # shard like transformers does when the model is large
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in hf_state.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    for old in list(path.glob("model*.safetensors")) + list(path.glob("model.safetensors.index.json")):
        old.unlink()
    if len(shards) == 1:
        _atomic_save(shards[0], path / "model.safetensors")
    else:
        wm = {}
        for n, shard in enumerate(shards):
            fname = f"model-{n + 1:05d}-of-{len(shards):05d}.safetensors"
            _atomic_save(shard, path / fname)
            wm.update({k: fname for k in shard})
        total = sum(t.numel() * t.element_size() for t in hf_state.values())
        (path / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": wm}, indent=2)
        )
    (path / "config.json").write_text(json.dumps(hf_cfg, indent=2))
    eos = cfg.eos_id
    if instruction_tuned and tokenizer is not None and tokenizer.end_of_turn_id is not None:
        eos = [cfg.eos_id, tokenizer.end_of_turn_id]
    (path / "generation_config.json").write_text(
        json.dumps({"bos_token_id": cfg.bos_id, "eos_token_id": eos, "pad_token_id": cfg.pad_id}, indent=2)
    )
    if tokenizer is not None:
        save_tokenizer_files(
            tokenizer.model_proto_bytes, path, chat_template=CHAT_TEMPLATE if instruction_tuned else None
        )
    return path


# Gemma's chat template as the instruction-tuned checkpoints ship it (Jinja, transformers' apply_chat_template):
# no system role, a leading system message folded into the first user turn with a blank line, contents trimmed;
# the same rendering as Tokenizer.render_chat (tests/train/test_sft.py renders both)
CHAT_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set first_user_prefix = messages[0]['content'] + "
    "'\\n\\n' %}{% set loop_messages = messages[1:] %}{% else %}{% set first_user_prefix = '' %}{% set loop_messages = "
    "messages %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == "
    "0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'assistant' %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') + message['content']"
    " | trim + '<end_of_turn>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}"
    "{% endif %}"
)


def save_tokenizer_files(model_proto: bytes, path: Path, chat_template: str | None = None) -> None:
    """tokenizer.model (a SentencePiece model's bytes) and the config files transformers reads beside it."""
    (path / "tokenizer.model").write_bytes(model_proto)
    specials = {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"}
    (path / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "GemmaTokenizer",
                "add_bos_token": True,
                "add_eos_token": False,
                "model_max_length": 1_000_000,
                **specials,
                **({"chat_template": chat_template} if chat_template else {}),
            },
            indent=2,
        )
    )
    (path / "special_tokens_map.json").write_text(json.dumps(specials, indent=2))


def _atomic_save(tensors: dict[str, torch.Tensor], dst: Path) -> None:
    with atomic_path(dst) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
