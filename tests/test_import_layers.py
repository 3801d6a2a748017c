"""The layers hold: pricing needs no torch, and no modules import each other.

The cost layer (``profiling.losses.registry``, ``costs``, ``methods``, the ``*_cost``
siblings) and ``simulator`` (except the files that measure) are numpy only, so
``simulator.predict`` and ``sigsim predict`` never load torch; a walk over the module-level
imports of every project module finds no cycle.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("profiling", "simulator", "experiments", "benchmarks")
TORCH_SIDE = ("torch", "open_clip", "torchvision")
"""Top-level packages whose import means torch is loaded."""
MEASURERS = (
    "simulator.benchmarks",
    "simulator.microbench",
    "simulator.calibrate",
    "simulator.calibrated_profile",
    "simulator.step_fit",
    "simulator.measured_trace",
)
"""The ``simulator`` modules that measure (time kernels, read the GPU): they may import
torch. ``simulator.benchmarks`` and ``simulator.microbench`` name one file, before and
after its rename."""
METHOD_ORDER = (
    "sigmoid-allgather",
    "sigmoid-ring",
    "sigmoid-ring-bidir",
    "softmax-allgather",
    "softmax-ring",
)


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        if not (ROOT / package).is_dir():  # benchmarks/ is being folded into experiments/
            continue
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _top_level_imports(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """Modules (project ones by full name, others by top-level package) that ``path``
    imports when it is imported: statements at module level, including inside top-level
    ``try``/``if`` blocks but not under ``if TYPE_CHECKING``; not inside functions."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(body):
        for node in body:
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                for alias in node.names:
                    child = f"{base}.{alias.name}"
                    found.add(child if child in modules else base)
            elif isinstance(node, ast.If):
                if "TYPE_CHECKING" not in ast.unparse(node.test):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
                visit(node.orelse)
                visit(node.finalbody)

    visit(ast.parse(path.read_text(), str(path)).body)
    return {m if m in modules else m.split(".")[0] for m in found} - {name}


def _graph():
    modules = _modules()
    return modules, {name: _top_level_imports(p, name, modules) for name, p in modules.items()}


def _cycles(edges: dict[str, set[str]]) -> list[str]:
    """Each cycle a depth-first walk closes, as "a -> b -> a"."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []
    cycles = []

    def walk(name):
        state[name] = 1
        stack.append(name)
        for dep in sorted(edges[name]):
            if state.get(dep) == 1:
                cycles.append(" -> ".join([*stack[stack.index(dep) :], dep]))
            elif dep not in state:
                walk(dep)
        stack.pop()
        state[name] = 2

    for name in sorted(edges):
        if name not in state:
            walk(name)
    return cycles


def test_cycle_finder_finds_a_cycle():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(edges) == ["a -> b -> c -> a"]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_between_modules():
    modules, graph = _graph()
    edges = {name: {m for m in deps if m in modules} for name, deps in graph.items()}
    assert len(modules) > 50  # the walk saw the project
    assert "profiling.losses.registry" in edges["simulator.model"]
    cycles = _cycles(edges)
    assert not cycles, "module-level import cycles:\n" + "\n".join(cycles)


def _loads(name: str, graph: dict[str, set[str]]) -> set[str]:
    """Everything importing ``name`` loads: its imports, transitively, and the
    ``__init__`` of every package above each module reached."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        parts = current.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        todo += graph.get(current, ())
    return seen


def test_cost_layer_and_simulator_import_no_torch_at_module_level():
    modules, graph = _graph()
    cost_layer = [
        "profiling.losses",
        "profiling.losses.registry",
        "profiling.losses.costs",
        "profiling.losses.methods",
        *(m for m in modules if m.startswith("profiling.losses.") and m.endswith("_cost")),
    ]
    assert len(cost_layer) >= 9  # the five siblings are found
    simulator = [m for m in modules if m.split(".")[0] == "simulator" and m not in MEASURERS]
    assert "simulator.model" in simulator and "simulator.incumbents.open_clip" in simulator
    offenders = {}
    for name in (*cost_layer, *simulator):
        torch_side = sorted(_loads(name, graph) & set(TORCH_SIDE))
        if torch_side:
            offenders[name] = torch_side
    assert not offenders, f"these load torch at module level: {offenders}"


def _fresh_python(code: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    return subprocess.run(
        [sys.executable, *args, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_predict_leaves_torch_unimported():
    code = (
        "import sys, time\n"
        "t0 = time.perf_counter()\n"
        "import simulator\n"
        "p = simulator.predict('sigmoid-ring', 64, 1024, 768, 'bf16', 'h100-sxm')\n"
        "print(time.perf_counter() - t0, float(p.step_time_s) > 0, len(sys.modules),\n"
        "      'torch' in sys.modules)\n"
    )
    started = time.perf_counter()
    run = _fresh_python(code)
    wall_s = time.perf_counter() - started
    assert run.returncode == 0, run.stderr
    import_and_predict_s, priced, n_modules, has_torch = run.stdout.split()
    print(
        f"\nimport simulator + predict: {float(import_and_predict_s):.3f} s in-process, "
        f"{wall_s:.3f} s with interpreter start, {n_modules} modules"
    )
    assert priced == "True"
    assert has_torch == "False"


def test_sigsim_predict_leaves_torch_unimported():
    code = (
        "import sys\n"
        "from experiments.cli import main\n"
        "try:\n"
        "    main(['predict', '--method', 'sigmoid-ring', '--world', '8,64', '--batch', '1024',\n"
        "          '--dim', '768', '--dtype', 'bf16', '--hardware', 'h100-sxm'])\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "print('TORCH', 'torch' in sys.modules)\n"
    )
    started = time.perf_counter()
    run = _fresh_python(code)
    print(f"\nsigsim predict in a fresh interpreter: {time.perf_counter() - started:.3f} s")
    assert run.returncode == 0, run.stderr
    assert "sigmoid-ring" in run.stdout
    assert run.stdout.strip().splitlines()[-1] == "TORCH False"


def test_methods_register_in_table_order_without_torch():
    code = (
        "import sys\n"
        "from profiling.losses import METHODS, get_method\n"
        "print(','.join(METHODS), get_method('sigmoid-ring').runnable, 'torch' in sys.modules)\n"
    )
    run = _fresh_python(code)
    assert run.returncode == 0, run.stderr
    order, runnable, has_torch = run.stdout.split()
    assert tuple(order.split(",")) == METHOD_ORDER
    assert runnable == "True" and has_torch == "False"
