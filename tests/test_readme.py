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


def test_the_first_python_example_runs_and_prints_what_it_says():
    readme = (ROOT / "README.rst").read_text()
    start = readme.index(".. code-block:: python\n\n") + len(".. code-block:: python\n\n")
    block = readme[start:readme.index("\n\n", readme.index("print(events.events)", start))]
    code = "\n".join(line[4:] for line in block.splitlines())
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "holding fence 1" in result.stdout
    assert "MemberJoined(group='workers', member='worker-1'), LeaderElected(group='workers', member='worker-1')" in result.stdout


def test_the_benchmark_summary_is_the_committed_runs():
    # The numbers a newcomer reads are those of the results committed beside them.
    readme = (ROOT / "README.rst").read_text()
    start = readme.index(".. include-bench-summary-start\n") + len(".. include-bench-summary-start\n")
    end = readme.index(".. include-bench-summary-end")
    assert readme[start:end].strip("\n") == (ROOT / "benchmarks" / "results" / "summary.rst").read_text().strip("\n")
