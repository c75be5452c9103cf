import pytest
import torch

from opengemma.config import LAYER_GLOBAL, LAYER_LOCAL, PRESETS, GemmaConfig
from opengemma.model import Gemma, num_params

# The paper's Table 1
TABLE1_NON_EMBEDDING = {"gemma-2b": 1_981_884_416, "gemma-7b": 7_751_248_896}


@pytest.mark.parametrize("name", list(TABLE1_NON_EMBEDDING))
def test_table1_non_embedding_params_exact(name):
    cfg = GemmaConfig.from_name(name)
    assert cfg.num_params(embedding=False) == TABLE1_NON_EMBEDDING[name]
    with torch.device("meta"):
        model = Gemma(cfg)
    assert num_params(model, embedding=False) == TABLE1_NON_EMBEDDING[name]
    assert num_params(model) == cfg.num_params()
    # released embedding: 256000 rows (the table's 256128 counts padding rows), tied with the output
    assert model.embed.weight.shape[0] == 256000 and model.lm_head is None


def test_table1_shapes():
    b2, b7 = GemmaConfig.from_name("gemma-2b"), GemmaConfig.from_name("gemma-7b")
    assert (b2.d_model, b2.n_layers, b2.n_heads, b2.n_kv_heads, b2.head_dim, 2 * b2.d_ff) == (
        2048,
        18,
        8,
        1,
        256,
        32768,
    )
    assert (b7.d_model, b7.n_layers, b7.n_heads, b7.n_kv_heads, b7.head_dim, 2 * b7.d_ff) == (
        3072,
        28,
        16,
        16,
        256,
        49152,
    )
    assert b2.max_seq_len == b7.max_seq_len == 8192


@pytest.mark.parametrize("name", ["gemma-2b", "gemma-7b"])
def test_reduced_depth_real_width_forward(name):
    cfg = GemmaConfig.from_name(name, n_layers=1)
    with torch.device("meta"):
        model = Gemma(cfg)
    model.to_empty(device="cpu")
    model.init_rope()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    logits = model(torch.tensor([[2, 651, 6037, 576, 6081, 603]]))
    assert logits.shape == (1, 6, 256000)
    assert torch.isfinite(logits).all()


def test_real_model_presets():
    g = GemmaConfig.from_name("gemma-3-270m")
    assert g.num_params() == 268_098_176  # as the GGUF's metadata says (ASSETS.md)
    assert [i for i, t in enumerate(g.layer_types) if t == LAYER_GLOBAL] == [5, 11, 17]
    g2 = GemmaConfig.from_name("gemma-2-2b")
    assert g2.layer_types[:2] == [LAYER_LOCAL, LAYER_GLOBAL] and g2.attn_softcap == 50 and g2.final_softcap == 30
    for name in ["gemma-2-9b", "gemma-2-27b", "gemma-3-1b"]:
        GemmaConfig.from_name(name)
    assert GemmaConfig.from_name("gemma-2-27b").query_pre_attn_scalar == 144


def test_unknown_preset_and_key_list_valid_ones():
    with pytest.raises(ValueError, match="unknown model preset 'gemma-4b'.*gemma-2b.*gemma-7b"):
        GemmaConfig.from_name("gemma-4b")
    with pytest.raises(ValueError, match=r"unknown GemmaConfig keys \['d_modle'\].*d_model"):
        GemmaConfig.from_name("gemma-2b", d_modle=3)


def _gemma3_old_keys():
    return {
        "model_type": "gemma3_text",
        "architectures": ["Gemma3ForCausalLM"],
        "vocab_size": 262144,
        "hidden_size": 640,
        "intermediate_size": 2048,
        "num_hidden_layers": 18,
        "num_attention_heads": 4,
        "num_key_value_heads": 1,
        "head_dim": 256,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1_000_000.0,
        "rope_local_base_freq": 10_000.0,
        "sliding_window": 512,
        "sliding_window_pattern": 6,
        "query_pre_attn_scalar": 256,
        "hidden_activation": "gelu_pytorch_tanh",
        "attn_logit_softcapping": None,
        "final_logit_softcapping": None,
        "rope_scaling": None,
    }


def test_from_hf_config_reads_old_and_new_keys():
    ref = GemmaConfig.from_name("gemma-3-270m")
    old = GemmaConfig.from_hf_config(_gemma3_old_keys())
    new_keys = {
        k: v
        for k, v in _gemma3_old_keys().items()
        if k not in ("rope_theta", "rope_local_base_freq", "sliding_window_pattern")
    }
    new_keys["layer_types"] = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(18)]
    new_keys["rope_parameters"] = {
        "full_attention": {"rope_type": "default", "rope_theta": 1e6},
        "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
    }
    new = GemmaConfig.from_hf_config(new_keys)
    for c in (old, new):
        c.name = ref.name
        ref.sliding_window_pattern = c.sliding_window_pattern = None
        assert c == ref
    # Gemma 3 4B+ uses linear RoPE scaling on global layers, in either spelling
    scaled = dict(_gemma3_old_keys(), rope_scaling={"rope_type": "linear", "factor": 8.0})
    assert GemmaConfig.from_hf_config(scaled).rope_scaling_factor == 8.0


def test_from_hf_config_gemma1_gelu_and_errors():
    hf = {
        "model_type": "gemma",
        "vocab_size": 256000,
        "hidden_size": 2048,
        "intermediate_size": 16384,
        "num_hidden_layers": 18,
        "num_attention_heads": 8,
        "num_key_value_heads": 1,
        "head_dim": 256,
        "hidden_act": "gelu",
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
    }
    cfg = GemmaConfig.from_hf_config(hf)
    assert cfg.num_params(embedding=False) == TABLE1_NON_EMBEDDING["gemma-2b"]
    with pytest.raises(ValueError, match="unsupported model_type 'llama'"):
        GemmaConfig.from_hf_config({**hf, "model_type": "llama"})
    with pytest.raises(ValueError, match="activation"):
        GemmaConfig.from_hf_config({**hf, "hidden_act": "silu"})


@pytest.mark.parametrize(
    "name", [n for n in PRESETS if n.startswith("tiny") or n.startswith("gemma-2-") or n.startswith("gemma-3")]
)
def test_hf_config_round_trip(name):
    cfg = GemmaConfig.from_name(name)
    back = GemmaConfig.from_hf_config(cfg.to_hf_config())
    back.name, back.sliding_window_pattern = cfg.name, cfg.sliding_window_pattern
    assert back == cfg
