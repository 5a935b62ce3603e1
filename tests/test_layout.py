"""House rules that a reader relies on, checked: imports run one way, functions and modules stay short.

Limits (issue 12): about 60 lines per function and 400 per module; a longer one states why in its
docstring, with the words "Long because".
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for d in ("services", "shared") for p in (ROOT / d).rglob("*.py"))
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 400
EXCUSE = "Long because"


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


# (package, packages it must never import): services -> shared only; inside the teacher,
# serving -> engine and tiny -> engine, never back, and serving and tiny know nothing of each other.
FORBIDDEN = [
    ("shared", ("services",)),
    ("services.teacher", ("services.student", "services.dashboard")),
    ("services.student", ("services.teacher", "services.dashboard")),
    ("services.dashboard", ("services.teacher", "services.student")),
    ("services.teacher.engine", ("services.teacher.serving", "services.teacher.tiny", "services.teacher.cli")),
    ("services.teacher.serving", ("services.teacher.tiny", "services.teacher.cli")),
    ("services.teacher.tiny", ("services.teacher.serving", "services.teacher.cli")),
]


@pytest.mark.parametrize(("package", "forbidden"), FORBIDDEN)
def test_imports_run_one_way(package: str, forbidden: tuple[str, ...]) -> None:
    folder = ROOT / package.replace(".", "/")
    offenders = [f"{_rel(p)} imports {name}" for p in folder.rglob("*.py") for name in sorted(_imports(p))
                 if any(name == f or name.startswith(f + ".") for f in forbidden)]
    assert not offenders, "\n".join(offenders)


def test_the_tiny_builder_and_trainer_do_not_import_each_other() -> None:
    build = _imports(ROOT / "services/teacher/tiny/build.py")
    train = _imports(ROOT / "services/teacher/tiny/train.py")
    assert not any(n.startswith("services.teacher.tiny.train") for n in build)
    assert any(n.startswith("services.teacher.tiny.build") for n in train)


def test_no_torch_in_shared_or_the_dashboard() -> None:
    offenders = [_rel(p) for d in ("shared", "services/dashboard") for p in (ROOT / d).rglob("*.py")
                 if any(n == "torch" or n.startswith("torch.") for n in _imports(p))]
    assert not offenders


def test_functions_stay_short_unless_they_say_why() -> None:
    long_ones = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES and EXCUSE not in (ast.get_docstring(node) or ""):
                    long_ones.append(f"{_rel(path)}:{node.lineno} {node.name} ({length} lines)")
    assert not long_ones, "\n".join(long_ones)


def test_modules_stay_short_unless_they_say_why() -> None:
    long_ones = []
    for path in SOURCES:
        text = path.read_text()
        lines = text.count("\n")
        if lines > MAX_MODULE_LINES and EXCUSE not in (ast.get_docstring(ast.parse(text)) or ""):
            long_ones.append(f"{_rel(path)} ({lines} lines)")
    assert not long_ones, "\n".join(long_ones)
