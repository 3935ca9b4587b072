"""The package's layers: every import goes down (or within a layer), and nothing imports in a circle.

Imports are read from the source (function-local ones too, which hide cycles from a plain
``import``). A new module must be placed in a layer here; docs/reference/layout.md draws the same
picture.
"""

from __future__ import annotations

import ast
import fnmatch
from pathlib import Path
from typing import Dict, Set

SRC = Path(__file__).resolve().parents[1] / "src"

LAYERS = [  # bottom first; names relative to the package, globs allowed
    ["experiments", "errors", "targets", "telemetry", "telemetry.tags", "use_roles"],  # vocabulary: no logic to depend on
    ["tying", "uses", "layers", "outputs", "objective", "target_models", "models", "initialization", "summary", "data",
     "data.*", "runs", "checkpoints", "checkpoint_checks", "guards", "progress", "run_folder", "resume", "slurm", "memory",
     "run_files", "event_records", "distributed", "ddp", "distributed_run"],  # parts
    ["telemetry.*"],  # watching a model train
    ["experiment", "config", "cli_help", "fit", "lens"],  # an experiment set up from its config; the public lens
    ["training", "lightning_callback", "transformers_callback"],  # the loop; the lens in Lightning's and Transformers' loops
    ["failures", "sweeps", "headline", "report", "report_figures", "inspection", "benchmark", "benchmark_lens", "benchmark_lightning",
     "benchmark_distributed"],  # what runs or reads runs
    ["hydra_plugins.experiments_launcher*"],  # the launchers Hydra loads (src/hydra_plugins/): Slurm, and joblib and submitit_local that stop cleanly
]


def modules() -> Dict[str, Path]:
    found = {}
    for path in [*(SRC / "experiments").rglob("*.py"), *(SRC / "hydra_plugins").rglob("*.py")]:
        name = ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        found[name] = path
    return found


def imports(name: str, path: Path, known: Set[str]) -> Set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            found |= {m for m in [base] + [f"{base}.{a.name}" for a in node.names] if m in known}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in known}
    return found - {name}


def layer_of(name: str) -> int:
    short = name.removeprefix("experiments.") if name != "experiments" else name
    for i, layer in enumerate(LAYERS):
        if short in layer:
            return i
    for i, layer in enumerate(LAYERS):  # globs after exact names: "telemetry.tags" sits below "telemetry.*"
        if any(fnmatch.fnmatchcase(short, pattern) for pattern in layer):
            return i
    raise AssertionError(f"module {name} is in no layer: add it to LAYERS in {__file__} and to docs/reference/layout.md")


def graph() -> Dict[str, Set[str]]:
    known = modules()
    return {name: imports(name, path, set(known)) for name, path in known.items()}


def test_every_import_goes_down_or_stays_in_its_layer():
    upward = [f"{a} (layer {layer_of(a)}) imports {b} (layer {layer_of(b)})"
              for a, targets in graph().items() for b in targets if layer_of(b) > layer_of(a)]
    assert not upward, "\n".join(upward)


def test_no_import_cycles():
    edges = graph()
    state: Dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            assert state.get(nxt) != 1, "import cycle: " + " -> ".join(path[path.index(nxt):] + [nxt]) \
                if nxt in path else f"import cycle through {nxt}"
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for start in sorted(edges):
        if start not in state:
            visit(start, [start])


def test_the_checker_sees_what_it_must():
    """The graph is not empty-by-accident: known edges, function-local imports included."""
    edges = graph()
    assert "experiments.telemetry.tags" in edges["experiments.runs"]
    assert "experiments.report_figures" in edges["experiments.report"]  # imported inside a function
    assert "experiments.data.dataset" in edges["experiments.data.synthetic"]
