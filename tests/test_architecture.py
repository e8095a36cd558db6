"""The package's shape, read from its source with `ast`: no import cycles, a core that never imports
a modality, and a modality chosen by its name only in the table (modalities/__init__.py)."""

from __future__ import annotations

import ast
from pathlib import Path

from data2vec2.modalities import MODALITIES

SRC = Path(__file__).parents[1] / "src"
PACKAGE = "data2vec2"
CORE = ("model", "encoder", "masking", "nn", "train", "objectives")  # never import modalities/
TABLE = f"{PACKAGE}.modalities"


def modules() -> dict[str, Path]:
    out = {}
    for f in (SRC / PACKAGE).rglob("*.py"):
        parts = f.relative_to(SRC).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules that `name` imports, at any depth of its code (an import inside a
    function is still an edge). Importing one's own parent package (`from .. import __version__`)
    is not an edge: the parent is initialised before its children anyway."""
    base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            root = base[: len(base) - (node.level - 1)] if node.level else []
            target = ".".join(root + ([node.module] if node.module else []))
            candidates = [target] + [f"{target}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        for c in candidates:
            if c in known and c != name and not (known[c].name == "__init__.py" and name.startswith(c + ".")):
                found.add(c)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(v: str) -> list[str] | None:
        state[v] = 1
        path.append(v)
        for w in sorted(edges[v]):
            if state.get(w) == 1:
                return path[path.index(w):] + [w]
            if w not in state and (cycle := visit(w)):
                return cycle
        state[v] = 2
        path.pop()
        return None

    for v in sorted(edges):
        if v not in state and (cycle := visit(v)):
            return cycle
    return None


def test_the_import_graph_sees_every_module():
    edges = graph()
    assert f"{PACKAGE}.train.loop" in edges and f"{TABLE}.image" in edges
    assert f"{TABLE}.image" in edges[TABLE]  # the table imports each modality


def test_no_import_cycles():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_core_never_imports_a_modality():
    bad = [f"{a} -> {b}" for a, bs in graph().items() for b in bs
           if a.split(".")[1:2] and a.split(".")[1] in CORE and (b == TABLE or b.startswith(TABLE + "."))]
    assert not bad, "\n".join(bad)


def test_the_building_blocks_import_nothing_above_them():
    """nn/ (blocks, decoders, EMA) imports no trainer, objective or modality; a modality's encoder
    imports no trainer: the arrows run down only."""
    above = {"nn": ("train", "objectives", "modalities"), "modalities.*.encoder": ("train",)}
    bad = []
    for a, bs in graph().items():
        parts = a.split(".")[1:]
        for layer, banned in above.items():
            pattern = layer.split(".")
            if len(parts) >= len(pattern) and all(x in ("*", y) for x, y in zip(pattern, parts)):
                bad += [f"{a} -> {b}" for b in bs if b.split(".")[1:2] and b.split(".")[1] in banned]
    assert not bad, "\n".join(bad)


def _strings(node: ast.AST) -> list[str]:
    """The string constants of a comparison operand (directly or inside a tuple, list or set)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [s for e in node.elts for s in _strings(e)]
    return []


def test_a_modality_is_chosen_by_name_only_in_the_table():
    """No `x == "image"`, `x in ("audio", "text")`, `match` on a name or `MODALITIES["text"]` anywhere
    but modalities/__init__.py."""
    names = set(MODALITIES)
    found = []
    for name, path in modules().items():
        if name == TABLE:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            operands = []
            if isinstance(node, ast.Compare):
                operands = [node.left, *node.comparators]
            elif isinstance(node, ast.MatchValue):
                operands = [node.value]
            elif isinstance(node, ast.Subscript) and "MODALITIES" in ast.unparse(node.value):
                operands = [node.slice]
            hits = names.intersection(s for op in operands for s in _strings(op))
            if hits:
                found.append(f"{path.relative_to(SRC)}:{node.lineno}: {sorted(hits)}")
    assert not found, "a modality name tested outside the table:\n" + "\n".join(found)


def test_the_table_lists_each_modality_folder_once():
    folders = sorted(p.name for p in (SRC / PACKAGE / "modalities").iterdir()
                     if p.is_dir() and (p / "__init__.py").exists())
    assert sorted(MODALITIES) == folders
    assert all(record.name == key for key, record in MODALITIES.items())


TESTS = Path(__file__).parent
TEST_SETTINGS = ("SMALL", "small_data", "STEP_CASES", "step_batch", "BASELINES", "half_bad_data", "FINETUNE",
                 "finetune_data")


def test_every_modality_folder_has_its_test_settings():
    """modalities/<name>/testing.py: what the per-modality tests read for each modality of the table."""
    import importlib

    for name in MODALITIES:
        module = importlib.import_module(f"{TABLE}.{name}.testing")
        missing = [a for a in TEST_SETTINGS if not hasattr(module, a)]
        assert not missing, f"modalities/{name}/testing.py lacks {', '.join(missing)}"


def test_no_test_module_lists_the_modalities_by_hand():
    """A hand-written list of modality names (a parametrize list, a table of cases) would leave out a
    new modality of the table without a word: per-modality tests iterate over MODALITIES. Checked:
    every list, tuple or set literal, and the keys of every dict literal, in tests/ that hold two or
    more modality names."""
    names = set(MODALITIES)
    found = []
    for path in sorted(TESTS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
                held = {s for s in _strings(node) if s in names}
            elif isinstance(node, ast.Dict):
                held = {k.value for k in node.keys if isinstance(k, ast.Constant) and k.value in names}
            else:
                continue
            if len(held) >= 2:
                found.append(f"{path.name}:{node.lineno}: {sorted(held)}")
    assert not found, "\n".join(found)
