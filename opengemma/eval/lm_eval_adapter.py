"""opengemma as a model of EleutherAI's lm-evaluation-harness (`pip install lm_eval`).

Importing this module registers the model name "opengemma":

    import lm_eval, opengemma.eval.lm_eval_adapter
    lm_eval.simple_evaluate(model="opengemma", model_args="pretrained=gemma-3-270m,dtype=bfloat16",
                            tasks=["hellaswag"])

or from the shell, `opengemma lm-eval --model opengemma --model_args pretrained=gemma-3-270m --tasks ...`
(lm_eval's own command line, with the model registered). Requests go through the same Scorer as
`opengemma eval`: exact log-likelihoods with shared-prefix batching, and batched generation.
"""

from __future__ import annotations

import lm_eval.api.model
from lm_eval.api.registry import register_model
from tqdm.auto import tqdm

from .scorer import Scorer


@register_model("opengemma")
class OpenGemmaLM(lm_eval.api.model.LM):
    def __init__(
        self,
        pretrained: str = "gemma-3-270m",
        dtype: str | None = None,
        device: str | None = None,
        quantize: str | None = None,
        batch_size: int | str = 16,
        max_length: int = 2048,
        llm=None,
        **kwargs,
    ):
        super().__init__()
        if llm is None:
            import opengemma

            llm = opengemma.load(pretrained, dtype=dtype, device=device, quantize=quantize, progress=False)
        self.llm = llm
        bs = 16 if str(batch_size).startswith("auto") else int(batch_size)
        self.scorer = Scorer(llm, batch_size=bs, max_len=int(max_length), progress=False)

    @property
    def max_length(self) -> int:
        return self.scorer.max_len

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [r.args for r in requests]
        out = self.scorer.loglikelihood(pairs)
        return [(lp, greedy) for lp, greedy, _ in out]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        # lm-eval's convention: every token predicted once, windows of max_length, the last one with a full context
        texts = [r.args[0] for r in requests]
        return [lp for lp, _ in self.scorer.loglikelihood_rolling(texts, stride=self.scorer.max_len - 1)]

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        # group requests with the same generation settings, generate each group batched
        groups: dict[str, list[int]] = {}
        for i, r in enumerate(requests):
            kw = dict(r.args[1])
            groups.setdefault(repr(sorted(kw.items())), []).append(i)
        out: list[str] = [""] * len(requests)
        for idx in tqdm(groups.values(), disable=disable_tqdm, desc="generate_until groups"):
            kw = dict(requests[idx[0]].args[1])
            until = kw.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kw.pop("max_gen_toks", 256))
            temperature = float(kw.pop("temperature", 0.0)) if kw.pop("do_sample", False) else 0.0
            top_p = float(kw.pop("top_p", 1.0))
            texts = self.scorer.generate(
                [requests[i].args[0] for i in idx],
                max_new_tokens=max_new,
                stop=until,
                temperature=temperature,
                top_p=top_p,
                seed=kw.pop("seed", None),
            )
            for i, t in zip(idx, texts):
                out[i] = t
        return out


def main(argv: list[str] | None = None) -> int:
    """lm_eval's command line with the opengemma model registered."""
    import sys

    from lm_eval.__main__ import cli_evaluate

    sys.argv = ["lm_eval"] + list(sys.argv[1:] if argv is None else argv)
    cli_evaluate()
    return 0


if __name__ == "__main__":
    main()
