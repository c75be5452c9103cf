"""What `opengemma data prepare` did, for people: report.json (everything), report.md (the tables) and report.png
(documents and bytes each stage removed, per source). Built from the per-shard records the stages left, so a
resumed run reports exactly what a clean one does."""

from __future__ import annotations

import json
from pathlib import Path

from ..atomic import atomic_path

# the order stages remove documents in (pipeline.py), for the tables and the chart
STAGE_ORDER = (
    "gopher_quality",
    "gopher_repetition",
    "fineweb_quality",
    "c4_bad_words",
    "exact_dedup",
    "minhash_dedup",
    "decontamination",
)


def _load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def build_report(read, shards, shard_source, cluster_stats, manifest, timings, cfg, index) -> dict:
    sources: dict[str, dict] = {}
    decontam: dict[str, dict] = {}
    pii_kinds: dict[str, int] = {}
    for name, info in read["sources"].items():
        sources[name] = {"input": info["input"], "docs_in": info["docs"], "bytes_in": info["bytes"], "removed": {}}
        sources[name].update(docs_out=0, bytes_out=0, pii_documents=0, read_errors=read["errors"][name]["count"])
    for shard, name in zip(shards, shard_source):
        src = sources[name]
        final = _load(shard / "final.json")
        for rec in (_load(shard / "done.json"), final):
            for stage, (docs, nbytes) in rec.get("removed", {}).items():
                r = src["removed"].setdefault(stage, {"docs": 0, "bytes": 0})
                r["docs"] += docs
                r["bytes"] += nbytes
        src["docs_out"] += final.get("docs_out", 0)
        src["bytes_out"] += final.get("bytes_out", 0)
        src["pii_documents"] += final.get("pii_documents", 0)
        for kind, n in final.get("pii", {}).items():
            pii_kinds[kind] = pii_kinds.get(kind, 0) + n
        for task, t in final.get("decontam", {}).items():
            d = decontam.setdefault(task, {"documents": 0, "examples": []})
            d["documents"] += t["documents"]
            d["examples"] = (d["examples"] + t["examples"])[:5]
    if manifest is not None:
        for name, m in manifest.get("sources", {}).items():
            sources[name]["tokens"] = sum(p["n_tokens"] for p in m["parts"])
    stages: dict[str, dict] = {}
    for src in sources.values():
        for stage, r in src["removed"].items():
            s = stages.setdefault(stage, {"docs": 0, "bytes": 0})
            s["docs"] += r["docs"]
            s["bytes"] = None if r["bytes"] is None else (s["bytes"] or 0) + r["bytes"]
    totals = {k: sum(s[k] for s in sources.values()) for k in ("docs_in", "bytes_in", "docs_out", "bytes_out")}
    if manifest is not None:
        totals["tokens"] = sum(s.get("tokens", 0) for s in sources.values())
    return {
        "totals": totals,
        "sources": sources,
        "stages": dict(sorted(stages.items(), key=lambda kv: _order(kv[0]))),
        "dedup": {"cluster_sizes": cluster_stats},
        "decontamination": {
            "n": cfg.decontam.n if index is not None else None,
            "mode": cfg.decontam.mode,
            "tasks_checked": sorted(index.tasks) if index is not None else [],
            "matches": dict(sorted(decontam.items())),
        },
        "pii": {"kinds": dict(sorted(pii_kinds.items()))},
        "read_errors": read["errors"],
        "seconds": {k: round(v, 3) for k, v in timings.items()},
        "config": cfg.to_dict(),
        "tokenizer": manifest.get("tokenizer") if manifest else None,
    }


def _order(stage: str) -> int:
    return STAGE_ORDER.index(stage) if stage in STAGE_ORDER else len(STAGE_ORDER)


def _mb(n) -> str:
    return "-" if n is None else f"{n / 1e6:,.2f}"


def markdown(report: dict) -> str:
    t = report["totals"]
    lines = ["# Data preparation report", ""]
    lines += [
        f"{t['docs_in']:,} documents ({_mb(t['bytes_in'])} MB) in, {t['docs_out']:,} ({_mb(t['bytes_out'])} MB) kept"
        + (f", {t['tokens']:,} tokens" if "tokens" in t else "")
        + ".",
        "",
        "## What each stage removed",
        "",
        "| stage | documents | MB |",
        "|---|---:|---:|",
    ]
    for stage, s in report["stages"].items():
        lines.append(f"| {stage} | {s['docs']:,} | {_mb(s['bytes'])} |")
    lines += ["", "## Per source", "", "| source | docs in | MB in | docs kept | MB kept | tokens | removed by stage |"]
    lines.append("|---|---:|---:|---:|---:|---:|---|")
    for name, s in report["sources"].items():
        removed = ", ".join(f"{k} {v['docs']:,}" for k, v in sorted(s["removed"].items(), key=lambda kv: _order(kv[0])))
        lines.append(
            f"| {name} | {s['docs_in']:,} | {_mb(s['bytes_in'])} | {s['docs_out']:,} | {_mb(s['bytes_out'])} | "
            f"{s.get('tokens', 0):,} | {removed or '-'} |"
        )
    sizes = report["dedup"]["cluster_sizes"]
    if sizes:
        lines += ["", "## Near-duplicate clusters (MinHash)", "", "| cluster size | clusters |", "|---:|---:|"]
        lines += [f"| {k} | {v:,} |" for k, v in sizes.items() if int(k) > 1] or ["| - | 0 |"]
    d = report["decontamination"]
    lines += ["", "## Decontamination", ""]
    if d["n"] is None:
        lines.append("Off (no evaluation texts given).")
    else:
        lines.append(f"{d['n']}-gram overlap, mode {d['mode']}, against {len(d['tasks_checked'])} tasks.")
        lines += ["", "| task | documents matched | example |", "|---|---:|---|"]
        for task, m in d["matches"].items():
            ex = m["examples"][0] if m["examples"] else {}
            snippet = ex.get("text", "")[:80].replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {task} | {m['documents']:,} | {ex.get('id', '')}: {snippet} |")
        if not d["matches"]:
            lines.append("| (none) | 0 | |")
    if report["pii"]["kinds"]:
        lines += ["", "## PII redacted", "", "| kind | spans |", "|---|---:|"]
        lines += [f"| {k} | {v:,} |" for k, v in report["pii"]["kinds"].items()]
    errors = {k: v for k, v in report["read_errors"].items() if v["count"]}
    if errors:
        lines += ["", "## Malformed input records (skipped)", ""]
        for name, e in errors.items():
            where = "; ".join(f"{x['path']}:{x['line']}: {x['message']}" for x in e["examples"][:5])
            lines.append(f"- {name}: {e['count']:,} ({where})")
    lines += ["", "## Time per stage (s)", "", "| stage | seconds |", "|---|---:|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in report["seconds"].items()]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> bool:
    """Documents and MB removed per stage, stacked by source. False (no chart) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    stages = list(report["stages"]) or ["(nothing removed)"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.5 * len(stages) + 2), sharey=True)
    for ax, key, label in ((axes[0], "docs", "documents removed"), (axes[1], "bytes", "MB removed")):
        left = [0.0] * len(stages)
        for name, s in report["sources"].items():
            vals = [((s["removed"].get(st) or {}).get(key) or 0) / (1e6 if key == "bytes" else 1) for st in stages]
            ax.barh(stages, vals, left=left, label=name)
            left = [a + b for a, b in zip(left, vals)]
        ax.set_xlabel(label)
        ax.invert_yaxis() if ax is axes[0] else None
    axes[1].legend(fontsize="small")
    t = report["totals"]
    fig.suptitle(f"opengemma data prepare: {t['docs_in']:,} documents in, {t['docs_out']:,} kept")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return True


def write_report(out: Path, report: dict) -> None:
    with atomic_path(out / "report.json") as tmp:
        tmp.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(markdown(report))
    plot(report, out / "report.png")
