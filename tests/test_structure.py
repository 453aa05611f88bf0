"""The lab's shape, checked from the source: no import cycles, no private names imported across
modules, small modules, and import-only notebooks (no function or lambda definitions)."""
import ast
import json
import re
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


# The declared stages of llgbm, bottom to top: a module may import its own stage and the stages below
# it, never one above. `eval` sits right above `core` because teachers and generators are scored with
# it while they train. The entry modules at llgbm's top level (`python -m llgbm.run`, seed 002's
# `llgbm.training`, ...) are the roof: only users and tests import them.
LAYERS = ("core", "eval", "teachers", "delta", "generator", "lab", "notebook", "bench")
ENTRY = len(LAYERS)
GEOMLIB_MAY_IMPORT = ("llgbm.core", "llgbm.eval")


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "llgbm" or len(parts) == 1:
        return None
    return LAYERS.index(parts[1]) if parts[1] in LAYERS else ENTRY


def _upward(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(importer, imported) pairs that break the declared layering."""
    bad = []
    for mod, deps in graph.items():
        for dep in sorted(deps):
            if mod.startswith("llgbm") and dep.startswith("geomlib"):
                bad.append((mod, dep))
            elif mod.startswith("geomlib") and dep.startswith("llgbm") and not dep.startswith(GEOMLIB_MAY_IMPORT):
                bad.append((mod, dep))
            elif dep.startswith("llgbm.bench") and not mod.startswith("llgbm.bench"):
                bad.append((mod, dep))
            elif _layer(mod) is not None and _layer(dep) is not None and _layer(dep) > _layer(mod):
                bad.append((mod, dep))
    return bad


def test_layer_check_finds_planted_upward_imports():
    assert _upward({"llgbm.core.lora": {"llgbm.lab.experiment"}}) == [("llgbm.core.lora", "llgbm.lab.experiment")]
    assert _upward({"llgbm.eval.scoring": {"llgbm.teachers.zoo"}}) == [("llgbm.eval.scoring", "llgbm.teachers.zoo")]
    assert _upward({"llgbm.lab.zeroshot": {"llgbm.run"}}) == [("llgbm.lab.zeroshot", "llgbm.run")]
    assert _upward({"llgbm.eval.lm": {"geomlib.calabi.svd"}}) == [("llgbm.eval.lm", "geomlib.calabi.svd")]
    assert _upward({"geomlib.calabi.lab": {"llgbm.teachers.zoo"}}) == [("geomlib.calabi.lab", "llgbm.teachers.zoo")]
    assert _upward({"llgbm.lab.experiment": {"llgbm.core.lora", "llgbm.teachers.zoo"},
                    "geomlib.inl.lab": {"llgbm.eval.lm"}, "llgbm.bench.hotpaths": {"llgbm.notebook.report"}}) == []


def test_llgbm_is_laid_out_by_stage():
    stages = sorted(p.name for p in (ROOT / "llgbm").iterdir() if p.is_dir() and (p / "__init__.py").exists())
    assert stages == sorted(LAYERS)
    doc = ast.get_docstring(ast.parse((ROOT / "llgbm" / "__init__.py").read_text()))
    assert [line.split()[0] for line in doc.splitlines() if line.startswith("    ")] == list(LAYERS)   # its table, in order
    entries = sorted(p.stem for p in (ROOT / "llgbm").glob("*.py") if p.stem != "__init__")
    for stem in entries:                          # top-level modules are thin entry points, not code
        assert len((ROOT / "llgbm" / f"{stem}.py").read_text().splitlines()) <= 8, stem


def test_no_import_cycles_and_no_upward_imports():
    graph = _graph()
    assert "llgbm.core.lora" in graph and graph["llgbm.teachers.zoo"] >= {"llgbm.core.lora"}    # the graph sees real edges
    assert _cycles(graph) == []
    assert _upward(graph) == []


def _lazy_imports(path: Path) -> list[tuple[int, str]]:
    """Project imports inside functions, without a `# lazy:` comment saying why."""
    text = path.read_text()
    lines, tree = text.splitlines(), ast.parse(text)
    top = {id(n) for n in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in top:
            mods = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            project = any(m.startswith(PACKAGES) for m in mods) or getattr(node, "level", 0)
            if project and "# lazy:" not in " ".join(lines[node.lineno - 1:node.end_lineno]):
                out.append((node.lineno, lines[node.lineno - 1].strip()))
    return out


def test_lazy_imports_say_why():
    bad = {_name(p): found for p in MODULES if (found := _lazy_imports(p))}
    assert bad == {}, "a project import inside a function needs a `# lazy:` comment (the cycle or heavy import it avoids)"


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
    assert "import seaborn" in (ROOT / "llgbm" / "notebook" / "plots.py").read_text()


MAX_NOTEBOOK_LINES = 60


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_short_and_its_verdict_comes_from_a_ledger(nb):
    code = [ln for cell in _code(nb) for ln in cell.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    assert len(code) <= MAX_NOTEBOOK_LINES, f"{nb.name}: {len(code)} code lines (max {MAX_NOTEBOOK_LINES})"
    text = "\n".join(code)
    assert "ledger" in text, f"{nb.name} takes no metrics, claims or verdict from a ledger module"
    assert 'verdict = (f"' not in text and "supported = " not in text, f"{nb.name} builds a verdict itself"


def _presets() -> list[tuple[str, str, bool]]:
    """(module, class, follows the one rule) for every `preset(cls, profile, ...)` classmethod."""
    out = []
    for p in MODULES:
        for cls in (n for n in ast.walk(ast.parse(p.read_text())) if isinstance(n, ast.ClassDef)):
            for fn in cls.body:
                if isinstance(fn, ast.FunctionDef) and fn.name == "preset" and [a.arg for a in fn.args.args][:2] == ["cls", "profile"]:
                    calls = {getattr(c.func, "id", "") for c in ast.walk(fn) if isinstance(c, ast.Call)}
                    out.append((_name(p), cls.name, "preset_config" in calls))
    return out


def test_every_config_preset_follows_one_rule():
    found = _presets()
    assert {c for _, c, _ in found} >= {"ZooConfig", "GeneratorConfig", "TrainingConfig", "SuiteConfig", "CalabiConfig",
                                        "IGLabConfig", "IGTrainConfig", "CLConfig", "ScratchConfig", "INLLabConfig"}
    assert [(m, c) for m, c, ok in found if not ok] == []


def test_one_unknown_key_check():
    """Unknown names are caught by utils.check_known alone, not by a set difference written again."""
    pattern = re.compile(r"unknown\w* = (sorted\()?(set\(|\[\w+ for \w+ in)|bad = sorted\(set\(")
    offenders = [_name(p) for p in MODULES if p.name != "utils.py" and pattern.search(p.read_text())]
    assert offenders == []
