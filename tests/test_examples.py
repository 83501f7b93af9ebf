"""The examples/ programs run, and do what they say, on every backend -- and on tooz itself.

They are tooz programs: the only line that differs from a program written for
tooz is the marked import, and with that line switched they run on real tooz
(redis and ZooKeeper here) with the same outcome.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
FACADE_IMPORT = "from coordactors.compat.tooz import coordination  # with tooz: from tooz import coordination\n"
TOOZ_IMPORT = "from tooz import coordination\n"
PROCESS_LOCAL = ("memory://", "zake://")
RUN_TIMEOUT = 90.0


def _run_all(commands: list[list[str]]) -> list[tuple[int, list[dict[str, Any]], str]]:
    """Run the commands side by side; return (status, JSON lines, stderr) for each."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    processes = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for command in _commands(commands)
    ]
    results = []
    try:
        for process in processes:
            out, err = process.communicate(timeout=RUN_TIMEOUT)
            results.append((process.returncode, [json.loads(line) for line in out.splitlines() if line.strip()], err))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return results


def _commands(commands: list[list[str]]) -> list[list[str]]:
    """Each command run by this Python."""
    return [[sys.executable, *command] for command in commands]


def _copies(url: str, script: Path, count: int, *args: str) -> list[list[str]]:
    """``count`` workers: processes, or threads of one process where the backend is process-local."""
    if url.startswith(PROCESS_LOCAL):
        return [[str(script), url, "--threads", str(count), "--member", "m", *args]]
    return [[str(script), url, "--member", f"m-{i}", *args] for i in range(count)]


def _check_ok(results: list[tuple[int, list[dict[str, Any]], str]]) -> list[dict[str, Any]]:
    for status, _lines, err in results:
        assert status == 0, err[-3000:]
    return [line for _status, lines, _err in results for line in lines]


def assert_one_leader_ran_the_pool(lines: list[dict[str, Any]], workers: int) -> None:
    elected = [line["member"] for line in lines if line["event"] == "elected"]
    assert len(elected) == 1, lines
    leader = elected[0]
    followers = {line["member"]: line["leader"] for line in lines if line["event"] == "following"}
    assert set(followers.values()) == {leader}, lines
    assert len(followers) == workers - 1
    pools = [line["members"] for line in lines if line["event"] == "pool"]
    assert len(pools) == 1 and len(pools[0]) == workers and leader in pools[0]
    done = [line for line in lines if line["event"] == "done"]
    assert sorted(line["member"] for line in done) == sorted(pools[0])


def assert_each_period_ran_once(lines: list[dict[str, Any]], ledger: Path, periods: int) -> None:
    assert not [line for line in lines if line["event"] == "overlap"], lines
    records = [json.loads(line) for line in ledger.read_text().splitlines()]
    ran = [record["period"] - records[0]["first"] for record in records[1:]]
    assert sorted(ran) == list(range(periods)), records
    assert sorted(line["period"] for line in lines if line["event"] == "ran") == list(range(periods))


def test_worker_pool_elects_exactly_one_leader(backend_url: str) -> None:
    lines = _check_ok(_run_all(_copies(backend_url, EXAMPLES / "worker_pool.py", 3, "--workers", "3", "--seconds", "60")))
    assert_one_leader_ran_the_pool(lines, 3)


def test_cron_job_runs_every_period_exactly_once_without_overlap(backend_url: str, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    args = ("--ledger", str(ledger), "--period", "0.25", "--periods", "4", "--seconds", "60")
    lines = _check_ok(_run_all(_copies(backend_url, EXAMPLES / "cron_job.py", 3, *args)))
    assert_each_period_ran_once(lines, ledger, 4)


def _as_tooz_program(script: Path, tmp_path: Path) -> Path:
    """The example with its one marked import switched to tooz (nothing else may differ)."""
    text = script.read_text()
    assert text.count(FACADE_IMPORT) == 1
    switched = tmp_path / script.name
    switched.write_text(text.replace(FACADE_IMPORT, TOOZ_IMPORT))
    differing = [pair for pair in zip(text.splitlines(), switched.read_text().splitlines()) if pair[0] != pair[1]]
    assert differing == [(FACADE_IMPORT.rstrip("\n"), TOOZ_IMPORT.rstrip("\n"))]
    return switched


@pytest.fixture(params=["redis", "zookeeper"])
def tooz_url(request: Any) -> str:
    """A URL real tooz understands, on the harness's server, with a fresh namespace."""
    import tooz.coordination  # noqa: F401 - in the test extra: a missing tooz fails, never skips
    server = request.getfixturevalue(f"{request.param}_server")
    return f"{server.url}?namespace=t{uuid.uuid4().hex[:12]}"


def test_the_examples_are_tooz_programs_that_run_on_tooz_itself(tooz_url: str, tmp_path: Path) -> None:
    pool = _as_tooz_program(EXAMPLES / "worker_pool.py", tmp_path)
    group = f"pool-{uuid.uuid4().hex[:8]}"
    lines = _check_ok(_run_all(_copies(tooz_url, pool, 3, "--workers", "3", "--group", group, "--seconds", "60")))
    assert_one_leader_ran_the_pool(lines, 3)

    cron = _as_tooz_program(EXAMPLES / "cron_job.py", tmp_path)
    ledger = tmp_path / "ledger"
    args = ("--ledger", str(ledger), "--period", "0.25", "--periods", "4", "--seconds", "60")
    lines = _check_ok(_run_all(_copies(tooz_url, cron, 2, *args)))
    assert_each_period_ran_once(lines, ledger, 4)
