"""No test module imports another: what two test modules share lives in ``tests/support/`` or in
a ``conftest.py``, so that reading one test file never means reading another one's tests."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def imports_of_test_modules(root: Path) -> list[str]:
    """``file:line imports module`` for every import, under ``root``, of a module named ``test_*``."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                # `from . import test_x` names the test module in the alias, not in `module`.
                modules = [f"{node.module or ''}.{alias.name}" for alias in node.names]
            else:
                continue
            for module in modules:
                if any(part.startswith("test_") for part in module.split(".")):
                    found.append(f"{path.relative_to(root)}:{node.lineno} imports {module.strip('.')}")
    return found


def test_no_module_of_the_suite_imports_a_test_module() -> None:
    found = imports_of_test_modules(TESTS)
    assert not found, "move what is shared into tests/support/ or a conftest.py:\n" + "\n".join(found)


def test_the_check_names_the_file_and_line_of_each_import_of_a_test_module(tmp_path: Path) -> None:
    (tmp_path / "cluster").mkdir()
    (tmp_path / "cluster" / "test_a.py").write_text("import json\nfrom test_upgrade import install\n")
    (tmp_path / "test_b.py").write_text("import test_controller\nfrom support.harness import Harness\n")
    (tmp_path / "test_c.py").write_text("from . import test_b\nfrom testbed.scenario import Scenario\n")
    assert imports_of_test_modules(tmp_path) == [
        "cluster/test_a.py:2 imports test_upgrade.install",
        "test_b.py:1 imports test_controller",
        "test_c.py:1 imports test_b",
    ]
