"""The ``coordactors`` command line, run as a user runs it: in a subprocess.

``memory://`` lives inside one process, so these tests use ``file://`` (a
registry shared by the processes of this host) and the harness's real
redis-server; the test process plays the other members.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import uuid
from typing import Any, Callable, Iterator

import pytest

import coordactors
from helpers import wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
CLI = [sys.executable, "-m", "coordactors"]
PASSWORD = "s3cr3t-Pa55"

pytestmark = pytest.mark.timeout(60)


def run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run the CLI to completion."""
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, env=ENV, check=False)


class Cli:
    """A CLI process left running, its output read line by line with deadlines."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [*CLI, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
        )
        self.lines = {"stdout": queue.Queue(), "stderr": queue.Queue()}  # type: dict[str, queue.Queue[str]]
        self.text = {"stdout": "", "stderr": ""}
        self._readers = [threading.Thread(target=self._read, args=(name,), daemon=True) for name in self.lines]
        for reader in self._readers:
            reader.start()

    def _read(self, name: str) -> None:
        for line in getattr(self.process, name):
            self.text[name] += line
            self.lines[name].put(line)

    def line(self, stream: str = "stdout", timeout: float = 15) -> str:
        """The next line the CLI wrote on ``stream``."""
        try:
            return self.lines[stream].get(timeout=timeout).rstrip("\n")
        except queue.Empty:
            raise AssertionError(f"no line on {stream} within {timeout}s; stderr so far: {self.text['stderr']!r}") from None

    def send(self, text: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(text)
        self.process.stdin.flush()

    def wait(self, timeout: float = 15) -> int:
        """The exit status, once the CLI has exited and its output is read."""
        status = self.process.wait(timeout)
        for reader in self._readers:
            reader.join(timeout)
        return status

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def start() -> Iterator[Callable[..., Cli]]:
    """Start CLI processes; any still running is killed after the test."""
    started: list[Cli] = []

    def make(*args: str) -> Cli:
        started.append(Cli(*args))
        return started[-1]

    yield make
    for cli in started:
        cli.close()


@pytest.fixture
def file_url(tmp_path: Any) -> str:
    return f"file://{tmp_path}/coord"


@pytest.fixture(params=["file", "redis"])
def url(request: Any, tmp_path: Any) -> str:
    """A private place on a backend that coordinates processes."""
    if request.param == "file":
        return f"file://{tmp_path}/coord"
    return f"{request.getfixturevalue('redis_server').url}?namespace=cli{uuid.uuid4().hex[:12]}"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- help -----------------------------------------------------------------------


def test_help_lists_every_command_and_documents_the_exit_statuses() -> None:
    result = run("--help")
    assert result.returncode == 0
    for command in ("lock", "members", "leader", "groups", "watch"):
        assert command in result.stdout
        sub = run(command, "--help")
        assert sub.returncode == 0 and f"coordactors {command}" in sub.stdout
    for status in ("64", "69", "70", "75"):
        assert status in run("lock", "--help").stdout


# -- lock ------------------------------------------------------------------------


def test_lock_runs_the_command_with_the_fence_in_its_environment_and_passes_its_status_through(url: str) -> None:
    script = 'echo "$COORDACTORS_FENCE $COORDACTORS_LOCK $COORDACTORS_MEMBER"; exit 3'
    first = run("lock", url, "nightly", "--member", "cron-1", "--", "sh", "-c", script)
    assert first.returncode == 3, first.stderr
    fence, name, member = first.stdout.split()
    assert (name, member) == ("nightly", "cron-1")
    second = run("lock", url, "nightly", "--", "sh", "-c", 'echo "$COORDACTORS_FENCE $COORDACTORS_MEMBER"')
    assert second.returncode == 0, second.stderr
    next_fence, default_member = second.stdout.split()
    assert int(next_fence) > int(fence)
    assert default_member.startswith(socket.gethostname() + "-")


def test_a_second_lock_on_the_same_name_times_out_with_75_then_gets_it_once_the_first_exits(url: str, start: Callable[..., Cli]) -> None:
    holder = start("lock", url, "deploy", "--", "sh", "-c", 'echo "$COORDACTORS_FENCE"; read done')
    held_fence = int(holder.line())

    busy = run("lock", url, "deploy", "--timeout", "0.3", "--", "echo", "must not run")
    assert busy.returncode == 75
    assert "must not run" not in busy.stdout
    assert "'deploy'" in busy.stderr and "Traceback" not in busy.stderr

    waiter = start("lock", url, "deploy", "--timeout", "20", "--verbose", "--", "sh", "-c", 'echo "$COORDACTORS_FENCE"')
    assert "waiting for 'deploy'" in waiter.line("stderr")
    holder.send("\n")
    assert holder.wait() == 0
    assert int(waiter.line()) > held_fence
    assert waiter.wait() == 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_is_forwarded_to_the_command_and_the_lock_is_released(url: str, start: Callable[..., Cli], signum: int) -> None:
    cli = start("lock", url, "job", "--", "sh", "-c", "echo $$; exec sleep 60")
    child_pid = int(cli.line())
    cli.process.send_signal(signum)
    assert cli.wait() == 128 + signum  # the command died of the forwarded signal, and that is our status
    assert not alive(child_pid)
    after = run("lock", url, "job", "--timeout", "5", "--", "echo", "free")
    assert (after.returncode, after.stdout) == (0, "free\n"), after.stderr
    assert "Traceback" not in cli.text["stderr"]


def test_sigterm_while_waiting_for_the_lock_exits_143_without_running_the_command(file_url: str, start: Callable[..., Cli]) -> None:
    holder = start("lock", file_url, "job", "--", "sh", "-c", "echo held; read done")
    assert holder.line() == "held"
    waiter = start("lock", file_url, "job", "--verbose", "--", "echo", "must not run")
    assert "waiting for 'job'" in waiter.line("stderr")
    waiter.process.send_signal(signal.SIGTERM)
    assert waiter.wait() == 143
    assert "must not run" not in waiter.text["stdout"] and "Traceback" not in waiter.text["stderr"]
    holder.send("\n")
    assert holder.wait() == 0
    assert run("lock", file_url, "job", "--timeout", "0", "--", "true").returncode == 0  # nobody was left holding it


def test_losing_the_lock_stops_the_command_and_exits_70(redis_server: Any, start: Callable[..., Cli]) -> None:
    import redis

    namespace = f"cli{uuid.uuid4().hex[:12]}"
    cli = start("lock", f"{redis_server.url}?namespace={namespace}&session_ttl=1", "job", "--kill-after", "5",
                "--", "sh", "-c", "echo $$; exec sleep 60")
    child_pid = int(cli.line())
    client = redis.Redis(host=redis_server.host, port=redis_server.port)
    try:
        assert client.delete(f"{namespace}:lock:job") == 1  # the lock vanishes under its holder
    finally:
        client.close()
    assert cli.wait(20) == 70
    assert not alive(child_pid)
    assert "'job'" in cli.text["stderr"] and "lost" in cli.text["stderr"] and "Traceback" not in cli.text["stderr"]


def test_a_command_that_does_not_exist_exits_127_and_leaves_the_lock_free(file_url: str) -> None:
    result = run("lock", file_url, "job", "--", "no-such-command-xyz")
    assert result.returncode == 127
    assert "no-such-command-xyz" in result.stderr and "Traceback" not in result.stderr
    assert run("lock", file_url, "job", "--timeout", "0", "--", "true").returncode == 0


def test_lock_without_a_command_is_a_usage_error() -> None:
    result = run("lock", "memory://", "job")
    assert result.returncode == 64 and "--" in result.stderr


# -- members, leader, groups ------------------------------------------------------------


def test_members_leader_and_groups_show_what_other_processes_set_up(file_url: str) -> None:
    with coordactors.connect(file_url, "alice") as alice, coordactors.connect(file_url, "bob") as bob:
        alice.join("workers", {"slots": 4}, create=True)
        bob.join("workers", {"slots": 2})
        alice.campaign("workers")
        wait_until(lambda: alice.leader("workers") == "alice")
        alice.create_group("idle")

        members = run("members", file_url, "workers")
        assert (members.returncode, members.stdout) == (0, "alice\nbob\n"), members.stderr
        with_capabilities = run("members", file_url, "workers", "--json")
        assert json.loads(with_capabilities.stdout) == {"alice": {"slots": 4}, "bob": {"slots": 2}}
        leader = run("leader", file_url, "workers")
        assert (leader.returncode, leader.stdout) == (0, "alice\n"), leader.stderr
        no_leader = run("leader", file_url, "idle")
        assert (no_leader.returncode, no_leader.stdout) == (1, "")
        groups = run("groups", file_url)
        assert (groups.returncode, groups.stdout) == (0, "idle\nworkers\n"), groups.stderr


def test_members_of_a_group_that_does_not_exist_exits_66(file_url: str) -> None:
    result = run("members", file_url, "nowhere")
    assert result.returncode == 66
    assert "'nowhere'" in result.stderr and "Traceback" not in result.stderr


# -- watch ------------------------------------------------------------------------------


def test_watch_prints_a_json_line_per_event_and_stops_after_count(url: str, start: Callable[..., Cli]) -> None:
    with coordactors.connect(url, "observer") as observer:
        observer.create_group("workers")
        cli = start("watch", url, "workers", "--count", "2", "--timeout", "20")
        assert "watching group 'workers'" in cli.line("stderr")
        with coordactors.connect(url, "w1") as worker:
            worker.join("workers")
            worker.leave("workers")
        assert cli.wait() == 0, cli.text["stderr"]
    lines = [json.loads(line) for line in cli.text["stdout"].splitlines()]
    assert [(e["event"], e["group"], e["member"]) for e in lines] == [("MemberJoined", "workers", "w1"), ("MemberLeft", "workers", "w1")]
    assert all(e["time"].endswith("Z") for e in lines)


def test_watch_ends_cleanly_on_sigterm_and_with_75_when_count_is_not_reached_in_time(file_url: str, start: Callable[..., Cli]) -> None:
    cli = start("watch", file_url, "workers")
    assert "watching" in cli.line("stderr")
    cli.process.send_signal(signal.SIGTERM)
    assert cli.wait() == 0
    assert "Traceback" not in cli.text["stderr"]
    quiet = run("watch", file_url, "workers", "--count", "1", "--timeout", "0.3")
    assert (quiet.returncode, quiet.stdout) == (75, "")


# -- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize("bad_url", [
    "bogus://somewhere",
    "file://relative/dir",
    f"redis://user:{PASSWORD}@127.0.0.1:6379?no_such_option=1",
])
def test_a_bad_url_exits_64_with_a_message_and_no_traceback(bad_url: str) -> None:
    result = run("groups", bad_url)
    assert result.returncode == 64
    assert result.stderr.startswith("coordactors groups: ") and "Traceback" not in result.stderr
    assert PASSWORD not in result.stdout + result.stderr


@pytest.mark.parametrize("command", [["lock", "job", "--", "true"], ["members", "g"], ["leader", "g"], ["groups"], ["watch", "g"]],
                         ids=lambda c: c[0])
def test_an_unreachable_server_exits_69_without_traceback_or_password(command: list[str]) -> None:
    url = f"redis://user:{PASSWORD}@127.0.0.1:{free_port()}?connect_timeout=2"
    result = run(command[0], url, *command[1:])
    assert result.returncode == 69, result.stderr
    assert "unreachable" in result.stderr and "redis://user:***@127.0.0.1" in result.stderr
    assert "Traceback" not in result.stderr
    assert PASSWORD not in result.stdout + result.stderr


def test_check_is_the_safety_checker_with_its_own_help() -> None:
    result = subprocess.run([sys.executable, "-m", "coordactors", "check", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "usage: coordactors check" in result.stdout and "--nemesis" in result.stdout
