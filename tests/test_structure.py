"""The lab's shape, checked from the source: no import cycles, no private names imported across
modules, small modules, and import-only notebooks (no function or lambda definitions)."""
import ast
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("llgbm", "geomlib")
MODULES = sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
MAX_LINES = 350


def _name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(imported module, names) for every import anywhere in the file, lazy ones included."""
    pkg = ".".join(path.relative_to(ROOT).parent.parts)
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:                                  # relative: from . import x / from .x import y
                up = pkg.rsplit(".", node.level - 1)[0] if node.level > 1 else pkg
                base = f"{up}.{base}" if base else up
            names = [a.name for a in node.names]
            if not node.module and node.level:              # `from . import a, b` imports modules a and b
                out += [(f"{base}.{n}", []) for n in names]
            else:
                out.append((base, names))
    return out


def _graph() -> dict[str, set[str]]:
    known = {_name(p) for p in MODULES}
    return {_name(p): {m for m, _ in _imports(p) if m in known and m != _name(p)} for p in MODULES}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"
    for n in sorted(graph):
        if n not in state:
            visit(n, [n])
    return found


def test_cycle_finder_finds_a_planted_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    graph = _graph()
    assert "llgbm.lora" in graph and graph["llgbm.zoo"] >= {"llgbm.lora"}    # the graph sees real edges
    assert _cycles(graph) == []


def test_lora_is_the_bottom_of_the_package():
    allowed_third_party = {"torch", "peft", "safetensors", "numpy"}
    mods = {m.split(".")[0] if not m.startswith("llgbm") else m for m, _ in _imports(ROOT / "llgbm" / "lora.py")}
    internal = {m for m in mods if m.startswith("llgbm")}
    assert internal <= {"llgbm.utils"}, internal
    assert mods - internal - {"__future__", "contextlib", "gc", "hashlib", "json", "pathlib"} <= allowed_third_party


def test_no_private_name_is_imported_across_modules():
    known = {_name(p) for p in MODULES}
    bad = [(_name(p), m, n) for p in MODULES for m, names in _imports(p) if m in known for n in names
           if n.startswith("_") and not n.startswith("__")]
    assert bad == []


@pytest.mark.parametrize("path", MODULES, ids=[_name(p) for p in MODULES])
def test_module_is_small_and_documented(path):
    text = path.read_text()
    assert len(text.splitlines()) <= MAX_LINES, f"{path.name}: {len(text.splitlines())} lines (max {MAX_LINES})"
    if path.stem != "__init__":
        assert ast.get_docstring(ast.parse(text)), f"{path.name} has no module docstring"


def _code(nb: Path) -> list[str]:
    return ["".join(c["source"]) for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code"]


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_import_only(nb):
    cells = _code(nb)
    tree = ast.parse("\n".join(cells))
    defs = [type(n).__name__ for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef))]
    assert defs == [], f"{nb.name} defines {defs}: move the logic into a tested module"
    loops = [n for n in ast.walk(tree) if isinstance(n, (ast.For, ast.While))]
    assert not any(any(isinstance(x, ast.Call) and getattr(x.func, "attr", "") in ("backward", "step") for x in ast.walk(loop))
                   for loop in loops), f"{nb.name} holds a training loop"
    second = ast.parse(cells[1]) if len(cells) > 1 else None
    assert second is not None and any(isinstance(n, ast.Call) and getattr(n.func, "id", "") == "check_params"
                                      for n in ast.walk(second)), f"{nb.name} does not check its parameters first"


def test_seaborn_is_pinned_and_used():
    pins = (ROOT / "requirements.txt").read_text()
    assert any(line.startswith("seaborn==") for line in pins.splitlines())
    assert "import seaborn" in (ROOT / "llgbm" / "plots.py").read_text()
