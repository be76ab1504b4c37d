"""The shape of the package, measured from its source (issue 11's targets):
no import cycle, no module over 500 lines, no function over 60, no class over
250, and engine names only under ``engines/`` (plus the help and docs users read)."""

from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lipsync_tool"
MAX_MODULE, MAX_FUNCTION, MAX_CLASS = 500, 60, 250
ENGINE_NAMES = ("sadtalker", "wav2lip")


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _runtime_nodes(tree: ast.AST):
    """Every node, except those under ``if TYPE_CHECKING:`` (imports for type checkers only)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                stack.extend(child.orelse)
                continue
            stack.append(child)


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every lipsync_tool module *name* imports, at any depth of the code (lazy imports too)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name and not name.startswith(t + "."):  # a package's own __init__ is not a cycle
                out.add(t)
    return out


def test_no_import_cycles():
    modules = _modules()
    known = set(modules)
    graph = {name: _imports(name, path, known) for name, path in modules.items()}
    # The site/ shims run inside the engine's process and are not imported by the package.
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                cycles.append(stack[stack.index(m) :] + [m])
            elif m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_sizes():
    over = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        lines = len(text.splitlines())
        if lines > MAX_MODULE:
            over.append(f"{path.relative_to(PACKAGE)}: {lines} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                length = node.end_lineno - node.lineno + 1
                if length > (MAX_CLASS if isinstance(node, ast.ClassDef) else MAX_FUNCTION):
                    over.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}: {length} lines")
    assert not over, over


def _code_mentions(path: Path) -> list[str]:
    """Engine names in identifiers and in string values used as data (not in
    docstrings, comments, or sentences meant for people: help, messages)."""
    hits = []
    tokens = tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
    for tok in tokens:
        text = tok.string.lower()
        if tok.type == tokenize.NAME and any(e in text for e in ENGINE_NAMES):
            hits.append(f"{path.name}:{tok.start[0]} {tok.string}")
        elif tok.type == tokenize.STRING and " " not in text.strip("\"'") and any(e in text for e in ENGINE_NAMES):
            hits.append(f"{path.name}:{tok.start[0]} {tok.string}")
    return hits


@pytest.mark.parametrize("path", [p for p in sorted(PACKAGE.rglob("*.py")) if "engines" not in p.relative_to(PACKAGE).parts], ids=lambda p: str(p.relative_to(PACKAGE)))
def test_engine_names_stay_in_engines(path):
    assert not _code_mentions(path)
