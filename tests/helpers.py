"""Build tiny random transformers Gemma models from opengemma presets (the reference for parity tests)."""
import torch
import transformers

from opengemma.config import GemmaConfig

HF_CLASSES = {
    "gemma": (transformers.GemmaConfig, transformers.GemmaForCausalLM),
    "gemma2": (transformers.Gemma2Config, transformers.Gemma2ForCausalLM),
    "gemma3": (transformers.Gemma3TextConfig, transformers.Gemma3ForCausalLM),
}


def make_hf_model(cfg: GemmaConfig, seed: int = 0):
    """A transformers model of this config with random weights, norms included (nonzero)."""
    hf_cfg_dict = cfg.to_hf_config()
    cfg_cls, model_cls = HF_CLASSES[cfg.family]
    hf_cfg = cfg_cls(**{k: v for k, v in hf_cfg_dict.items() if k not in ("architectures", "model_type")})
    hf_cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = model_cls(hf_cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.normal_(0, 0.5)  # zero-init norms would hide a (1 + w) bug
            elif "embed" in name:
                p.normal_(0, 0.1)
    return model


def tiny_model(name: str = "tiny-gemma3", std: float = 0.1, seed: int = 0, **overrides):
    """An opengemma model of a preset with random weights (norms nonzero, so a (1 + w) bug shows)."""
    from opengemma.model import Gemma

    torch.manual_seed(seed)
    model = Gemma(GemmaConfig.from_name(name, **overrides)).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.normal_(0, 0.5 if n.endswith("norm.weight") else std)
    return model


def explain_decode_step(model, greedy: bool = True, max_k: int | None = None):
    """torch._dynamo.explain of the engine's decode step on `model` (batch of 2, a fresh 32-slot cache):
    what torch.compile(fullgraph=True) would see, without compiling."""
    import torch._dynamo

    from opengemma.engine.generate import decode_step

    B = 2
    model.setup_cache(B, 32, prefill_chunk=4)
    args = (model, torch.tensor([5, 6]), torch.tensor([3]), torch.tensor([0, 1]), torch.full((B,), 0.0 if greedy else 1.0),
            torch.full((B,), max_k or 0), torch.ones(B), torch.rand(B), greedy, max_k)
    torch._dynamo.reset()
    try:
        with torch.inference_mode():
            return torch._dynamo.explain(decode_step)(*args)
    finally:
        model.clear_cache()
