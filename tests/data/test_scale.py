"""The datatrove path in its single-machine mode: our quality filters, exact and MinHash dedup, decontamination and
PII redaction run as datatrove steps on LocalPipelineExecutor give the same kept ids, redacted texts and removal
reasons as dedup.py, filters.py, decontam.py and pii.py called directly on the same documents in the same order."""

import gzip
import json
import pickle
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

pytest.importorskip("datatrove")

from datatrove.executor import LocalPipelineExecutor  # noqa: E402

from opengemma.data import dedup, pii  # noqa: E402
from opengemma.data.config import PipelineConfig  # noqa: E402
from opengemma.data.decontam import EvalText, NGramIndex, decontaminate  # noqa: E402
from opengemma.data.filters import build_filters, first_reason  # noqa: E402
from opengemma.data.scale import build_pipelines, chain, removal_counts, stage_tasks  # noqa: E402

VOCAB = (
    "river mountain garden window letter kitchen morning evening winter summer village forest market teacher student "
    "doctor farmer painter sailor soldier castle bridge harbor valley meadow candle mirror pocket blanket ladder basket "
    "engine wagon lantern compass anchor feather pebble orchard cottage chimney quiet gentle bright narrow ancient "
    "sudden careful patient silent golden heavy simple proud hungry clever carried watched found opened painted "
    "followed noticed remembered repaired visited crossed borrowed"
).split()
STOP = ("the", "of", "and", "to", "with", "that")
EVAL = "which of the following best describes the role of the mitochondria in a eukaryotic cell during respiration"


def prose(rng: random.Random, lines: int = 8) -> str:
    """Distinct-looking English-shaped text: every line a sentence of random words and stop words."""
    words = lambda k: " ".join(rng.choice(VOCAB) if rng.random() < 0.7 else rng.choice(STOP) for _ in range(k))
    return "\n".join(f"The {words(rng.randint(11, 16))}." for _ in range(lines))


def mutate(rng: random.Random, text: str, k: int) -> str:
    words = text.split(" ")
    for i in rng.sample(range(len(words)), k):
        words[i] = rng.choice(VOCAB)
    return " ".join(words)


def corpus() -> list[list[dict]]:
    """Three input files, a planted case for every stage, the middle one all junk; -> the files' records."""
    rng = random.Random(0)
    a = [{"id": f"a{i}", "text": prose(rng), "n": i} for i in range(14)]
    b = [{"id": f"b{i}", "text": prose(rng), "n": i} for i in range(10)]
    a += [
        {"id": "short", "text": "Far too short to be a document."},  # gopher_quality: < 50 words
        {"id": "lines", "text": "\n".join(["The same line of text again and again."] * 12)},  # gopher_repetition
        {"id": "swear", "text": a[2]["text"] + "\nWhat the fuck."},  # c4_bad_words
        {"id": "near_a", "text": mutate(rng, a[3]["text"], 2)},  # near-duplicate inside one rank
        {"id": "pii", "text": prose(rng) + "\nWrite to jane.doe@example.com or call +44 20 7946 0958 today."},
    ]
    b += [
        {"id": "exact", "text": a[5]["text"].upper().replace("\n", " \n ")},  # exact after normalization
        {"id": "near_b", "text": mutate(rng, a[7]["text"], 3)},  # near-duplicate across ranks
        {"id": "eval", "text": prose(rng) + f"\nQuestion: {EVAL}?"},  # decontamination
        {"id": "ip", "text": prose(rng) + "\nThe server at 192.168.14.7 answered."},
    ]
    junk = [{"id": "tiny1", "text": "Too short."}, {"id": "tiny2", "text": "Also far too short."}]
    return [a, junk, b]


def write(tmp_path: Path, files: list[list[dict]]) -> Path:
    src = tmp_path / "in"
    src.mkdir(parents=True)
    for i, docs in enumerate(files):  # gzip'd and plain: the reader infers compression
        path = src / (f"part{i}.jsonl" + (".gz" if i == 0 else ""))
        data = "".join(json.dumps(d) + "\n" for d in docs).encode()
        path.write_bytes(gzip.compress(data) if i == 0 else data)
    return src


def in_rank_order(files: list[list[dict]], tasks: int) -> list[dict]:
    """The documents in datatrove's global order: rank r reads files r, r + tasks, ... (DataFolder.get_shard)."""
    return [d for r in range(tasks) for f in files[r::tasks] for d in f]


def direct(docs: list[dict], cfg: PipelineConfig, evals: list[EvalText]) -> tuple[dict, dict]:
    """Our functions on the documents in order: -> ({id: kept text}, {id: (stage, reason)})."""
    filters, removed = build_filters(cfg.filters), {}
    survivors = []
    for d in docs:
        if (hit := first_reason(filters, d["text"])) is not None:
            removed[d["id"]] = hit
        else:
            survivors.append(d)
    texts, n = [d["text"] for d in survivors], len(survivors)
    mh = dedup.MinHashConfig(cfg.dedup.ngram, cfg.dedup.bands, cfg.dedup.rows, cfg.dedup.seed)
    exact = dedup.cluster_roots([dedup.bucket_pairs([dedup.content_hashes(texts)[:, None]], 0)], n)
    keys = dedup.band_keys(texts, mh)
    near = dedup.cluster_roots([dedup.bucket_pairs([keys], b) for b in range(mh.bands)], n)
    index, kept = NGramIndex(evals, n=cfg.decontam.n), {}
    for i, d in enumerate(survivors):
        if exact[i] != i:
            removed[d["id"]] = ("exact_dedup", f"duplicate of {survivors[exact[i]]['id']}")
        elif near[i] != i:
            removed[d["id"]] = ("minhash_dedup", f"near-duplicate of {survivors[near[i]]['id']}")
        elif (got := decontaminate(d["text"], index, mode=cfg.decontam.mode))[0] is None:
            m = got[1]
            more = f" (+{len(m) - 1} more)" if len(m) > 1 else ""
            removed[d["id"]] = ("decontamination", f"{index.n}-gram overlap with {m[0].task} item {m[0].item}{more}")
        else:
            text = got[0]
            kept[d["id"]] = pii.redact(text, cfg.pii.kinds)[0]
    return kept, removed


def read_out(out: Path) -> tuple[dict, dict, dict]:
    """({id: kept text}, {id: (stage, reason)}, {id: kept record}) from the datatrove run's output folders."""
    records = lambda sub: [json.loads(ln) for f in sorted((out / sub).rglob("*.jsonl.gz")) for ln in gzip.open(f, "rt")]
    kept = {r["id"]: r for r in records("kept")}
    removed = {r["id"]: (r["stage"], r["reason"]) for r in records("removed")}
    return {k: r["text"] for k, r in kept.items()}, removed, kept


def run_chain(tmp_path: Path, files, tasks: int, workers: int, evals, cfg=None) -> Path:
    out, cfg = tmp_path / "out", cfg or PipelineConfig()
    pipelines = build_pipelines(str(write(tmp_path, files)), str(out), cfg, eval_texts=evals)
    assert list(pipelines) == ["signatures", "buckets", "clusters", "final"]
    pipelines = pickle.loads(pickle.dumps(pipelines))  # what a Slurm/Ray/forkserver launch does to the steps
    assert stage_tasks(pipelines, tasks) == {"signatures": tasks, "buckets": 15, "clusters": 1, "final": tasks}
    executors = chain(
        pipelines, LocalPipelineExecutor, tasks=tasks, logging_dir=str(tmp_path / "logs"), workers=workers
    )
    executors["final"].run()  # runs its dependencies first
    return out


# 2 tasks: rank 0 reads files 0 and 2, rank 1 only junk (all filtered out); 3 tasks: the middle rank writes nothing,
# and the ranks after it must not shift, and the near-duplicate pairs a3/near_a, a7/near_b span two ranks
@pytest.mark.parametrize("tasks,mode", [(2, "remove"), (3, "excise")])
def test_datatrove_run_equals_our_functions(tmp_path, tasks, mode):
    files, evals = corpus(), [EvalText("mmlu", "q7", EVAL)]
    cfg = PipelineConfig()
    cfg.decontam.mode = mode
    out = run_chain(tmp_path, files, tasks=tasks, workers=1, evals=evals, cfg=cfg)
    kept, removed, records = read_out(out)
    want_kept, want_removed = direct(in_rank_order(files, tasks), cfg, evals)

    assert kept == want_kept
    assert removed == want_removed
    # every planted case met the stage meant for it (the comparison above is not between two empty outputs)
    stage = {i: s for i, (s, _) in removed.items()}
    planted = {"short": "gopher_quality", "tiny1": "gopher_quality", "tiny2": "gopher_quality"}
    planted |= {"lines": "gopher_repetition", "swear": "c4_bad_words", "exact": "exact_dedup"}
    planted |= {"near_a": "minhash_dedup", "near_b": "minhash_dedup"}
    if mode == "remove":
        planted["eval"] = "decontamination"
    else:  # GPT-3's excision: the 13-gram and 200 characters either side go, the rest of the document stays
        original = next(d["text"] for d in files[2] if d["id"] == "eval")
        assert original.startswith(kept["eval"]) and len(kept["eval"]) < len(original) - len(EVAL) - 200
    assert stage == planted
    assert removed["near_b"] == ("minhash_dedup", "near-duplicate of a7")  # the survivor is the first in order
    assert "jane.doe@example.com" not in kept["pii"] and "7946" not in kept["pii"] and "192.168" not in kept["ip"]
    assert "<EMAIL>" in kept["pii"] and "<IP_ADDRESS>" in kept["ip"]
    assert records["a1"]["n"] == 1  # metadata travels with the document
    assert removal_counts(out) == Counter(planted.values())
    sizes = json.loads((out / "minhash" / "cluster_sizes.json").read_text())
    assert sizes["2"] == 3  # a3 + near_a, a7 + near_b, a5 + exact (near-identical too)


@pytest.mark.slow  # ~20 s: each of the four stages starts a forkserver pool
def test_two_worker_processes_give_the_same_output(tmp_path):
    """workers=2: datatrove's forkserver pool (the pipeline pickled into fresh processes) changes nothing."""
    files = corpus()
    one = read_out(run_chain(tmp_path / "one", files, tasks=2, workers=1, evals=[]))
    two = read_out(run_chain(tmp_path / "two", files, tasks=2, workers=2, evals=[]))
    assert one[:2] == two[:2] and len(one[0]) == sum(map(len, files)) - 8


def test_a_missing_datatrove_names_the_extra():
    code = "import sys; sys.modules['datatrove'] = None; import opengemma.data.scale"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode != 0 and "pip install 'opengemma[data-scale]'" in r.stderr


@pytest.mark.slow  # ~80 s on 2 cores (Ray's start-up); needs `pip install ray`, which the test extra leaves out
def test_ray_executor_gives_the_same_output(tmp_path):
    ray = pytest.importorskip("ray")
    from datatrove.executor import RayPipelineExecutor

    root = str(Path(__file__).resolve().parents[2])  # Ray's workers import opengemma from the checkout
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": root}})
    try:
        files, evals = corpus(), [EvalText("mmlu", "q7", EVAL)]
        out = tmp_path / "out"
        pipelines = build_pipelines(str(write(tmp_path, files)), str(out), PipelineConfig(), eval_texts=evals)
        logs = str(tmp_path / "logs")
        chain(pipelines, RayPipelineExecutor, tasks=2, logging_dir=logs, workers=2, mem_per_cpu_gb=0.5)["final"].run()
    finally:
        ray.shutdown()
    kept, removed, _ = read_out(out)
    assert (kept, removed) == direct(in_rank_order(files, 2), PipelineConfig(), evals)
