"""Import layering: product code does not depend on the lab, and the agent imports nothing from the controller.

Checked on the source (an AST walk over every import statement, lazy ones inside functions included), so a
layering break fails here whether or not the import ever runs.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: The only modules of controller/ that may import controller.lab (the lab itself, its CLI, the demo).
LAB_USERS = ("controller/lab/", "controller/cli/lab_cmd.py", "controller/demo.py")


def imported_modules(path: Path) -> set[str]:
    """Every module an import statement in ``path`` names (``from a import b`` gives ``a`` and ``a.b``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def offenders(top: str, forbidden: str, allowed: tuple[str, ...] = ()) -> list[str]:
    """``file: module`` for each import under ``top`` of ``forbidden`` (or a submodule) outside ``allowed``."""
    out = []
    for path in sorted((ROOT / top).rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith(allowed):
            continue
        for name in sorted(imported_modules(path)):
            if name == forbidden or name.startswith(forbidden + "."):
                out.append(f"{rel}: {name}")
    return out


def test_product_code_does_not_import_the_lab() -> None:
    """Only the lab, `vmbackup lab` and the demo import controller.lab."""
    assert offenders("controller", "controller.lab", LAB_USERS) == []


def test_agent_imports_nothing_from_the_controller() -> None:
    """The agent ships alone into guests: no import of controller/ anywhere under agent/."""
    assert offenders("agent", "controller") == []


def test_the_check_sees_imports(tmp_path: Path) -> None:
    """The walk finds plain, from- and function-local imports (so an empty offender list means something)."""
    src = tmp_path / "m.py"
    src.write_text(
        "import controller.lab.vms\nfrom controller.lab import ports\n"
        "def f():\n    from controller import lab\n    return lab\n"
    )
    assert {"controller.lab.vms", "controller.lab", "controller.lab.ports", "controller"} <= imported_modules(src)
    assert "controller.lab" in imported_modules(src)  # `from controller import lab` names controller.lab
