"""The house rules of the package, checked on its source with the standard library's ast (DESIGN.md,
docs/design.md): no import cycles, imports only along the seams, one job per file stated in its opening
docstring, no package file much over 400 lines, and a top level that does not import torch."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "opengemma"
MAX_LINES = 420  # "~400" (ruff-formatted): a file that outgrows it does two jobs, or says why it is one file

# room -> the rooms it may import (a room is a top-level module or subpackage of opengemma). Rooms still to
# come (data, train, rl, recipes) are listed so the training wing lands on the seams DESIGN.md draws.
EVERYTHING = {
    "config",
    "atomic",
    "quant_spec",
    "kernels",
    "calibration",
    "tokenizer",
    "streaming",
    "gptq",
    "model",
    "qlinear",
    "quantize",
    "lora",
    "weights",
    "engine",
    "api",
    "serve",
    "eval",
    "cli",
    "data",
    "train",
    "rl",
    "recipes",
}
ALLOWED = {
    "config": set(),
    "atomic": set(),
    "quant_spec": set(),
    "kernels": set(),
    "calibration": set(),
    "tokenizer": set(),
    "streaming": set(),
    "gptq": set(),
    "model": {"config", "kernels"},
    "qlinear": {"kernels", "gptq"},
    "quantize": {"config", "kernels", "model", "gptq", "qlinear", "quant_spec"},
    "lora": {"atomic", "model", "qlinear", "quantize", "weights"},  # PEFT names from the HF weight map
    "weights": {"config", "atomic", "model", "qlinear", "quantize", "quant_spec", "calibration"},
    "engine": {"config", "kernels", "model"},
    "api": {
        "config",
        "quant_spec",
        "kernels",
        "model",
        "qlinear",
        "quantize",
        "lora",
        "weights",
        "engine",
        "tokenizer",
        "streaming",
    },
    "serve": {"config", "api", "engine", "tokenizer", "streaming"},
    "eval": {"config", "model", "engine", "tokenizer", "streaming", "data"},
    "data": {"tokenizer", "atomic"},  # and the one atomic write (a leaf)
    "train": {
        "config",
        "atomic",
        "kernels",
        "model",
        "qlinear",
        "quantize",
        "quant_spec",
        "lora",
        "weights",
        "tokenizer",
    },
    # the engine only for rollouts (rl/rollout.py): checked below; weights: the reward model's HF layout
    "rl": {"config", "model", "train", "engine", "weights"},
    "recipes": EVERYTHING - {"cli"},
    "cli": EVERYTHING - {"recipes", "rl"},  # torchrun launches the recipes; train: convert reads its checkpoints
}


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = ["opengemma", *p.relative_to(PKG).with_suffix("").parts]
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


MODULES = _modules()


def imports_of(name: str, path: Path) -> set[str]:
    """The opengemma modules `name` imports anywhere in its code (functions too), except under TYPE_CHECKING.
    `from . import kernels` imports opengemma.kernels, not the package's __init__."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in MODULES]
            out.update(subs or ([target] if target in MODULES else []))
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in MODULES)
    out.discard(name)
    return out


GRAPH = {m: imports_of(m, p) for m, p in MODULES.items()}


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_the_import_graph_has_no_cycle():
    # Tarjan's strongly connected components: any component of more than one module is a cycle
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in GRAPH:
        if v not in index:
            visit(v)
    assert not cycles, cycles


def test_imports_follow_the_seams():
    wrong = []
    for module, targets in GRAPH.items():
        r = room(module)
        if r == "":  # the package's lazy __init__
            continue
        assert r in ALLOWED, f"{module}: a new room; add it to ALLOWED (and docs/design.md)"
        for t in targets:
            tr = room(t)
            if tr and tr != r and tr not in ALLOWED[r]:
                wrong.append(f"{module} -> {t}")
            if r == "rl" and tr == "engine" and module != "opengemma.rl.rollout":
                wrong.append(f"{module} -> {t} (the engine only in rl/rollout.py)")
            if r == "recipes" and tr == "recipes" and t != "opengemma.recipes":
                wrong.append(f"{module} -> {t} (recipes never import each other)")
    assert not wrong, wrong


def test_every_file_states_its_job_and_stays_small():
    undocumented = [m for m, p in MODULES.items() if not (ast.get_docstring(ast.parse(p.read_text())) or "").strip()]
    assert not undocumented, f"no opening docstring: {undocumented}"
    # a longer file says why it is one file, in its opening docstring
    long = {
        m: n
        for m, p in MODULES.items()
        if (n := len(p.read_text().splitlines())) > MAX_LINES
        and "One file because" not in ast.get_docstring(ast.parse(p.read_text()))
    }
    assert not long, long


def _imports_torch(code: str) -> bool:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys; print('torch' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
        cwd=PKG.parent,
    )
    return out.stdout.strip().splitlines()[-1] == "True"


def test_config_and_the_command_lines_help_do_not_import_torch():
    assert not _imports_torch("import opengemma.config, opengemma.quant_spec")
    assert _imports_torch("import opengemma; opengemma.load")  # the lazy top level still gives the API
    from opengemma.cli import build_parser

    commands = list(build_parser()._subparsers._group_actions[0].choices)
    assert {"generate", "chat", "serve", "eval", "convert", "info"} <= set(commands)
    for argv in [["--help"]] + [[c, "--help"] for c in commands]:
        code = f"from opengemma.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass"
        assert not _imports_torch(code), argv


@pytest.mark.parametrize("module", ["opengemma.model", "opengemma.kernels"])
def test_model_and_kernels_know_nothing_of_the_engine_or_distribution(module):
    path = MODULES[module]
    assert not {t for t in GRAPH[module] if room(t) in ("engine", "weights", "tokenizer", "api")}
    assert "torch.distributed" not in path.read_text()
