"""The layout's promises, checked as CI checks them: the declared import contracts (pyproject.toml:
stages between the shared utilities and the orchestrator, no cycle between the modules of a package), no
command module imported by another module, and the linter's zero findings."""
from __future__ import annotations

import ast
import os
import subprocess
import sys

from tests.conftest import ROOT

BIN = os.path.dirname(sys.executable)
PACKAGES = ("common", "pipeline", "trainer", "serving", "deep_rnn", "bench")


def test_import_contracts_hold():
    proc = subprocess.run([os.path.join(BIN, "lint-imports"), "--no-cache"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def test_ruff_finds_nothing():
    proc = subprocess.run([os.path.join(BIN, "ruff"), "check", "--no-cache", "."], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:]


def _command_modules() -> set[str]:
    """Modules that are commands: a top-level main() run by an `if __name__ == "__main__":` block."""
    found = set()
    for package in PACKAGES:
        for path in (ROOT / package).glob("*.py"):
            tree = ast.parse(path.read_text())
            has_main = any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body)
            if has_main and 'if __name__ == "__main__":' in path.read_text():
                found.add(f"{package}.{path.stem}")
    return found


def _imported_modules(path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_no_module_imports_a_command_module():
    """Entry points stay thin: what a command does lives in a library module that others import instead
    (the deep-rnn dispatcher runs command modules with runpy, never imports them)."""
    commands = _command_modules()
    assert {"trainer.train", "serving.server", "deep_rnn.run_all"} <= commands
    offenders = []
    for package in PACKAGES:
        for path in (ROOT / package).glob("*.py"):
            for name in _imported_modules(path) & commands:
                offenders.append(f"{package}/{path.name} imports {name}")
    assert not offenders, offenders


def test_pipeline_holds_only_the_preprocessing_stage():
    modules = {p.stem for p in (ROOT / "pipeline").glob("*.py")} - {"__init__"}
    assert not modules & {"cli", "console", "atomic", "locks", "book", "report"}
    run_all = (ROOT / "pipeline" / "run_all.py").read_text()  # the old command's name only points to the new
    assert "import" not in run_all.replace("import sys", "")
