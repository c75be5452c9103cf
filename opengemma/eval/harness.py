"""Run evaluation tasks on a model and write the results.

    results = evaluate(llm, ["mmlu", "humaneval"], shots=None, limit=None, output="eval-out")

Per task: the items (a seeded subset with `limit`), k-shot contexts, then by kind: log-likelihoods of the
choices, generations with answer extraction, programs run in the sandbox, or rolling perplexity. The
output directory gets results.json (task -> metric -> value, with sample counts and settings),
results.md (a table), results.png (a bar chart) and samples/<task>.jsonl (every item's record).
"""

from __future__ import annotations

import json
import math
import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

from .scorer import Scorer
from .tasks.base import (
    CodeTask,
    GenerateTask,
    MultipleChoiceTask,
    PerplexityTask,
    Task,
    binomial_stderr,
    majority,
    mean_stderr,
    pass_at_k,
)


def sample_items(n: int, k: int | None, seed: int) -> list[int]:
    """Indices of a seeded subset of k of n items, in their original order (all when k is None or >= n)."""
    if k is None or k >= n:
        return list(range(n))
    return sorted(random.Random(seed).sample(range(n), k))


def _mean(records: list[dict], key: str) -> dict:
    xs = [float(r[key]) for r in records]
    m = sum(xs) / len(xs) if xs else float("nan")
    binary = all(x in (0.0, 1.0) for x in xs)
    return {key: m, f"{key}_stderr": binomial_stderr(m, len(xs)) if binary else mean_stderr(xs)}


def _samples(scorer, task, contexts, n: int, temperature: float, seed: int) -> list[list[str]]:
    """n generations per context (sample s seeded seed + s): what generation and code tasks score."""
    return [
        scorer.generate(
            contexts,
            task.max_new_tokens,
            task.stop,
            temperature=temperature,
            seed=seed + s,
            desc=f"{task.name} {s + 1}/{n}",
        )
        for s in range(n)
    ]


def run_task(
    task: Task,
    scorer: Scorer,
    *,
    shots: int | None = None,
    limit: int | None = None,
    seed: int = 1234,
    samples: int | None = None,
    temperature: float | None = None,
    code_timeout: float | None = None,
) -> tuple[dict, list[dict]]:
    """One task -> (metrics, per-item records)."""
    all_items = task.items()
    cap = limit if limit is not None else getattr(task, "max_items", None)
    idx = sample_items(len(all_items), cap, seed)
    k = task.default_shots if shots is None else shots
    rng = random.Random(seed)
    items = [all_items[i] for i in idx]
    contexts = [task.context(all_items[i], task.select_shots(all_items, i, k, rng)) for i in idx]
    t0 = time.perf_counter()
    metrics: dict = {}
    if hasattr(task, "evaluate"):  # a task with its own procedure (e.g. toxicity scoring)
        metrics, records = task.evaluate(scorer, items, contexts, rng)
    elif isinstance(task, MultipleChoiceTask):
        reqs = [task.requests(it, ctx) for it, ctx in zip(items, contexts)]
        flat = scorer.loglikelihood([r for rs in reqs for r in rs], desc=task.name)
        records, j = [], 0
        for it, rs in zip(items, reqs):
            records.append(task.score(it, flat[j : j + len(rs)]))
            j += len(rs)
        for m in task.metrics:
            metrics.update(_mean(records, m))
    elif isinstance(task, GenerateTask):
        n = samples or getattr(task, "samples", 1)
        temp = temperature if temperature is not None else (0.0 if n == 1 else getattr(task, "temperature", 0.7))
        outs = _samples(scorer, task, contexts, n, temp, seed)
        records = []
        for i, it in enumerate(items):
            texts = [o[i] for o in outs]
            preds = [task.extract(t) for t in texts]
            rec = {
                "generations": texts,
                "preds": preds,
                "answers": it.answers,
                "exact_match": float(task.is_correct(preds[0], it)),
            }
            if n > 1:
                rec[f"maj@{n}"] = float(task.is_correct(majority(preds), it))
            records.append(rec)
        for m in ["exact_match"] + ([f"maj@{n}"] if n > 1 else []):
            metrics.update(_mean(records, m))
    elif isinstance(task, CodeTask):
        from .sandbox import check_program

        n = samples or 1
        temp = temperature if temperature is not None else (0.0 if n == 1 else 0.8)
        outs = _samples(scorer, task, contexts, n, temp, seed)
        timeout = code_timeout or task.timeout
        programs = [(i, task.program(it, o[i])) for o in outs for i, it in enumerate(items)]
        with ThreadPoolExecutor(max_workers=2) as pool:  # the sandboxed processes run two at a time
            results = list(pool.map(lambda p: check_program(p[1], timeout=timeout), programs))
        passed = [[] for _ in items]
        for (i, _), r in zip(programs, results):
            passed[i].append(r)
        records = []
        for i, it in enumerate(items):
            c = sum(r.passed for r in passed[i])
            rec = {
                "task_id": it.task_id,
                "n": n,
                "correct": c,
                "status": [r.status for r in passed[i]],
                "completions": [o[i] for o in outs],
            }
            for kk in (1, 10, 100):
                if kk <= n:
                    rec[f"pass@{kk}"] = pass_at_k(n, c, kk)
            records.append(rec)
        for kk in (1, 10, 100):
            if kk <= n:
                metrics.update(_mean(records, f"pass@{kk}"))
    elif isinstance(task, PerplexityTask):
        texts = [task.prompt(it) for it in items]
        scores = scorer.loglikelihood_rolling(texts, desc=task.name)
        lp = sum(s for s, _ in scores)
        toks = sum(n for _, n in scores)
        words = sum(len(t.split()) for t in texts)
        nbytes = sum(len(t.encode("utf-8")) for t in texts)
        metrics = {
            "token_perplexity": math.exp(-lp / toks),
            "word_perplexity": math.exp(-lp / max(words, 1)),
            "bits_per_byte": -lp / max(nbytes, 1) / math.log(2),
        }
        records = [{"logprob": s, "tokens": n} for s, n in scores]
    else:
        raise TypeError(f"{task.name}: unknown task kind {type(task).__name__}")
    metrics.update(task.aggregate(items, records))
    metrics.update(n=len(items), shots=k, seconds=round(time.perf_counter() - t0, 1))
    return metrics, records


def evaluate(
    llm,
    tasks: Sequence[str | Task],
    *,
    shots: int | None = None,
    limit: int | None = None,
    seed: int = 1234,
    output: str | Path | None = None,
    data: dict[str, str] | None = None,
    samples: int | None = None,
    temperature: float | None = None,
    batch_size: int = 16,
    max_len: int = 2048,
    progress: bool = True,
) -> dict:
    """Evaluate `llm` (an opengemma LLM) on tasks (registered names or Task objects)."""
    from .tasks.registry import get_task

    scorer = Scorer(llm, batch_size=batch_size, max_len=max_len, progress=progress)
    out_dir = Path(output) if output is not None else None
    if out_dir is not None:
        (out_dir / "samples").mkdir(parents=True, exist_ok=True)
    results, groups = {}, {}
    for spec in tasks:
        if isinstance(spec, str):
            loaded = get_task(spec, (data or {}).get(spec))
        else:
            loaded = spec
        members = loaded if isinstance(loaded, list) else [loaded]
        for task in members:
            metrics, records = run_task(
                task, scorer, shots=shots, limit=limit, seed=seed, samples=samples, temperature=temperature
            )
            results[task.name] = metrics
            if progress:
                print(
                    f"{task.name}: "
                    + ", ".join(
                        f"{k}={_fmt(v)}"
                        for k, v in metrics.items()
                        if not isinstance(v, dict) and not k.endswith("_stderr")
                    )
                )
            if out_dir is not None:
                with open(out_dir / "samples" / f"{task.name}.jsonl", "w") as f:
                    for r in records:
                        f.write(json.dumps(r, default=str) + "\n")
        if isinstance(loaded, list) and isinstance(spec, str):
            groups[spec] = [t.name for t in members]
    for g, names in groups.items():  # a group's score: the mean of its tasks' headline metrics
        vals = [headline(results[n])[1] for n in names]
        results[g] = {"mean_score": sum(vals) / len(vals), "n": sum(results[n]["n"] for n in names), "tasks": names}
    report = {
        "model": getattr(llm, "name", "model"),
        "seed": seed,
        "shots": shots,
        "limit": limit,
        "max_len": max_len,
        "results": results,
    }
    if out_dir is not None:
        (out_dir / "results.json").write_text(json.dumps(report, indent=2, default=str))
        (out_dir / "results.md").write_text(markdown_table(report))
        plot(report, out_dir / "results.png")
    return report


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def headline(metrics: dict) -> tuple[str, float] | None:
    """The metric a task is known by: the first scalar in its results."""
    for k, v in metrics.items():
        if isinstance(v, float) and not k.endswith("_stderr") and not k.startswith("n_"):
            return k, v
    return None


def markdown_table(report: dict) -> str:
    lines = [
        f"# {report['model']}",
        "",
        "| task | metric | value | ± stderr | n | shots |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in report["results"].items():
        for k, v in m.items():
            if not isinstance(v, float) or k.endswith("_stderr") or k == "seconds":
                continue
            se = m.get(f"{k}_stderr")
            se_s = f"{se:.4f}" if isinstance(se, float) and not math.isnan(se) else ""
            lines.append(f"| {name} | {k} | {v:.4f} | {se_s} | {m.get('n', '')} | {m.get('shots', '')} |")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> bool:
    """A horizontal bar chart of each task's headline metric (matplotlib; skipped if it is missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no results.png (pip install 'opengemma[eval]')")
        return False
    rows = [(name, *h) for name, m in report["results"].items() if (h := headline(m)) is not None]
    if not rows:
        return False
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(rows) + 1.2))
    names = [f"{n} ({k})" for n, k, _ in rows]
    vals = [v for _, _, v in rows]
    ax.barh(names, vals, color="#4c72b0")
    for y, v in enumerate(vals):
        ax.text(v, y, f" {v:.3f}", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("score")
    ax.set_title(f"{report['model']}: evaluation results")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
