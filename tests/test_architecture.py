"""The layout's rules (docs/ARCHITECTURE.md), checked on the source: imports follow one order, and no
function on the main path grows past about 60 lines."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "chipprune"

# Each module may import modules of its own rank or lower, never higher. A module is ranked by the
# longest prefix of its dotted name listed here.
ORDER = [
    ["_version", "errors", "runtime", "io.atomic", "io.folder", "io.weights"],
    ["models"],
    ["surgery"],
    ["evaluation"],
    ["data"],
    ["scoring"],
    ["planning"],
    ["results"],
    ["reporting"],
    ["io.pruned", "io.onnx"],
    ["pipeline", "training"],
    ["pilot"],
    ["cli", "cli_types", "__main__", "__init__"],
]
RANK = {name: rank for rank, names in enumerate(ORDER) for name in names}


def _rank(module: str) -> int:
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in RANK:
            return RANK[".".join(parts[:end])]
    raise AssertionError(f"{module} has no place in ORDER: add it")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)


def _runtime_imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name within chipprune) of every relative import that runs at import time
    (imports under ``if TYPE_CHECKING:`` are for type checkers only)."""
    tree = ast.parse(path.read_text())
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
               for n in ast.walk(node)}
    package = list(path.relative_to(SRC).parts[:-1])
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level > 0 and id(node) not in skipped:
            base = package[: len(package) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
            names = [target] if node.module else [".".join(base + [a.name]) for a in node.names]
            found += [(node.lineno, n or "__init__") for n in names]
    return found


def test_imports_follow_the_order_of_the_layout():
    wrong = []
    for path in sorted(SRC.rglob("*.py")):
        source = _module_name(path)
        for line, target in _runtime_imports(path):
            if _rank(target) > _rank(source):
                wrong.append(f"{path.relative_to(SRC)}:{line} imports {target}")
    assert not wrong, "imports that run up the order (docs/ARCHITECTURE.md):\n" + "\n".join(wrong)


def test_no_function_is_longer_than_about_sixty_lines():
    long = [
        f"{path.relative_to(SRC)}:{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path in SRC.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 62
    ]
    assert not long, "split these functions:\n" + "\n".join(long)
