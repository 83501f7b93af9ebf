"""The README says what the code does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_backend_table_is_generated_from_the_backends_declarations():
    readme = (ROOT / "README.rst").read_text()
    start = readme.index(".. backend-table-start\n") + len(".. backend-table-start\n")
    end = readme.index(".. backend-table-end")
    generated = subprocess.run([sys.executable, str(ROOT / "scripts" / "backend_table.py")], capture_output=True, text=True, check=True).stdout
    assert readme[start:end].strip("\n") == generated.strip("\n")


def test_ci_runs_the_test_command_the_readme_shows():
    readme = (ROOT / "README.rst").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash scripts/install-test-deps && python3 -m pytest -q tests" in readme
    assert "bash scripts/install-test-deps\npython3 -m pytest -q tests\n" in ci
