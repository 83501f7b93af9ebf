"""The safety checker: is a backend's lock safe while things fail?

Several workers (processes, or threads where the backend only coordinates
one process) contend for one lock and read-modify-write a counter in a
:class:`~coordactors.testing.checker.register.FencedRegister` under it,
recording every hold, fence, write and loss notification.  A nemesis injects
one kind of fault per phase:

=================  ==========================================================
``none``           nothing: the baseline
``holder-kill``    SIGKILL the worker holding the lock (a thread: its session
                   crashes and it abandons everything)
``holder-pause``   SIGSTOP the holder for TTL + 1 s, then SIGCONT
``server-restart`` SIGKILL the server, restart it on the same port (only a
                   server the checker started: ``--private``)
``partition``      hold all traffic of the holder (each worker talks through
                   its own :class:`~coordactors.testing.faults.Proxy`) for
                   TTL + 1 s, then heal: what was held is delivered, as TCP
                   would after a partition
=================  ==========================================================

Then it reports, per phase: overlapping holds (a later holder granted while
an earlier one still believed -- not told of a loss, lease not expired on its
own clock), whether such an overlap had the earlier fence lower, lost updates
and stale writes the register rejected, the longest time nobody held the
lock (no write accepted by the register), how long a killed holder's lock took to move, and how long sessions
took to come back after a restart or partition.

From the command line (``coordactors check URL`` or
``python -m coordactors.testing.checker URL``)::

    coordactors check redis://127.0.0.1:6379 --nemesis none,holder-kill,holder-pause,partition
    coordactors check --private redis:// --nemesis all      # a throw-away server of that kind

From Python: :func:`run_check` returns a :class:`Report`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from typing import Any

import attrs

import coordactors
from coordactors import errors
from coordactors.characteristics import Characteristics
from coordactors.testing.checker.history import holds_from, judge_phase
from coordactors.testing.checker.register import FencedRegister
from coordactors.testing.clusters import Cluster
from coordactors.testing.faults import Proxy, kill_process, pause_process, resume_process
from coordactors.urls import parse_url, redact

__all__ = ["NEMESES", "Report", "main", "run_check"]

NEMESES = ("none", "holder-kill", "holder-pause", "server-restart", "partition", "node-kill")
LOCAL_SCHEMES = ("memory", "zake", "file", "ipc")
HARD_LIMIT = 600.0  # no check runs longer than this, whatever it is asked
NODE_FAILOVER_WAIT = 30.0  # node-kill: the longest wait for the cluster to name another primary


@attrs.define
class Report:
    """The outcome of a check: one result dict per phase (see ``history.judge_phase``)."""

    url: str
    workers: int
    ttl: float
    phases: list[dict[str, Any]]
    skipped: dict[str, str]
    mode: str

    @property
    def ok(self) -> bool:
        """True when no phase found a problem."""
        return all(phase["ok"] for phase in self.phases)

    @property
    def unsafe(self) -> list[str]:
        """Every problem other than a missed time bound (those start with ``SLOW:``), as ``nemesis: problem``."""
        return [f"{p['nemesis']}: {problem}" for p in self.phases for problem in p["problems"] if not problem.startswith("SLOW:")]

    def as_dict(self) -> dict[str, Any]:
        """Everything, JSON-serialisable."""
        return attrs.asdict(self) | {"ok": self.ok}

    def text(self) -> str:
        """A human-readable table, problems listed under it."""
        lines = [f"coordactors check {self.url}  ({self.workers} {self.mode} workers, TTL {self.ttl:g} s)",
                 f"{'nemesis':<15}{'holds':>6}{'writes':>7}{'overlaps':>9}{'inverted':>9}{'lost upd':>9}"
                 f"{'stale rej':>10}{'max unavail':>12}{'recovery':>10}  verdict"]
        for p in self.phases:
            recovery = p.get("kill_to_next_grant", p.get("restore_after_heal"))
            lines.append(f"{p['nemesis']:<15}{p['holds']:>6}{p['writes']:>7}{p['overlaps']:>9}{p['overlaps_fence_inverted']:>9}"
                         f"{p['lost_updates']:>9}{p['stale_rejected']:>10}{p['longest_unavailable']:>11.2f}s"
                         f"{'' if recovery is None else f'{recovery:.2f}s':>10}  {'ok' if p['ok'] else 'FAIL'}")
        for name, why in self.skipped.items():
            lines.append(f"{name:<15}n/a: {why}")
        for p in self.phases:
            lines += [f"  {p['nemesis']}: {problem}" for problem in p["problems"]]
        return "\n".join(lines)


class _Worker:
    """One worker: a process (or thread), its proxy, its records."""

    def __init__(self, name: str, config: dict[str, Any], sink: _Sink, threaded: bool, directory: str) -> None:
        self.name, self.config = name, config
        self.process: subprocess.Popen[str] | None = None
        self.thread: threading.Thread | None = None
        self.stop_event, self.crash_event = threading.Event(), threading.Event()
        self.killed = False
        emit = lambda record: sink.put(name, record)
        if threaded:
            from coordactors.testing.checker.worker import run

            self.thread = threading.Thread(target=run, args=(config, emit, self.stop_event, self.crash_event),
                                           name=f"checker-{name}", daemon=True)
            self.thread.start()
            return
        root = os.path.dirname(os.path.dirname(os.path.abspath(coordactors.__file__)))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
        self.stderr = open(os.path.join(directory, f"{name}.err"), "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "coordactors.testing.checker.worker", json.dumps(config)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True, env=env,
        )
        threading.Thread(target=self._read, args=(emit,), name=f"checker-read-{name}", daemon=True).start()

    def _read(self, emit: Any) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            try:
                emit(json.loads(line))
            except ValueError:
                emit({"k": "error", "at": time.monotonic(), "error": f"unreadable line {line[:200]!r}"})

    def kill(self) -> None:
        """As a crash: SIGKILL the process, or make the thread abandon its session."""
        self.killed = True
        if self.process is not None:
            kill_process(self.process)
        else:
            self.crash_event.set()

    def close(self, timeout: float = 20.0) -> None:
        """Stop politely (stdin closed / stop event), then by force."""
        if self.process is not None:
            if self.process.poll() is None:
                resume_process(self.process)  # in case it is paused
                if self.process.stdin is not None:
                    self.process.stdin.close()
                try:
                    self.process.wait(timeout)
                except subprocess.TimeoutExpired:
                    kill_process(self.process)
            for stream in (self.process.stdout, self.stderr):
                if stream is not None:
                    stream.close()
        elif self.thread is not None:
            self.stop_event.set()
            self.thread.join(timeout)


class _Sink:
    """All records of all workers, in arrival order, plus who holds what right now."""

    def __init__(self) -> None:
        self.records: list[tuple[str, dict[str, Any]]] = []
        self.holding: dict[str, int] = {}
        self.ready: set[str] = set()
        self.changed = threading.Condition()

    def put(self, worker: str, record: dict[str, Any]) -> None:
        with self.changed:
            self.records.append((worker, record))
            kind = record["k"]
            if kind == "grant":
                self.holding[worker] = record["fence"]
            elif kind in ("end", "lost") and self.holding.get(worker) == record.get("fence"):
                del self.holding[worker]
            elif kind == "ready":
                self.ready.add(worker)
            self.changed.notify_all()

    def wait(self, predicate: Any, timeout: float) -> bool:
        with self.changed:
            return bool(self.changed.wait_for(predicate, timeout))


class _Run:
    """One check: the workers, their proxies, the register, the server, the phases."""

    def __init__(self, url: str, *, workers: int, ttl: float, server: Any, proxies: bool, threaded: bool,
                 lease_ttl: bool, backoff_max: float, logs: str | None = None) -> None:
        self.url, self.ttl, self.server, self.threaded = url, ttl, server, threaded
        self.logs = logs
        self.backoff_max = backoff_max
        self.directory = tempfile.mkdtemp(prefix="coordactors-check-")
        self.register = FencedRegister(os.path.join(self.directory, "register")).create()
        tag = uuid.uuid4().hex[:8]
        self.lock, self.group = f"checker-lock-{tag}", f"checker-{tag}"
        self.sink = _Sink()
        self.workers: dict[str, _Worker] = {}
        self.proxies: dict[str, Proxy] = {}
        self.use_proxies = proxies
        self.lease_ttl = lease_ttl
        self.kills: dict[str, float] = {}
        self.count = 0
        self.started_at = time.monotonic()

    def spawn(self) -> _Worker:
        name = f"w{self.count}"
        self.count += 1
        url = self.url
        if self.use_proxies:
            split = urllib.parse.urlsplit(url)
            proxy = Proxy(split.hostname or "127.0.0.1", int(split.port or 0)).start()
            self.proxies[name] = proxy
            url = proxy.url_for(url)
        config = {"url": url, "member": f"checker-{name}", "lock": self.lock, "group": self.group,
                  "register": self.register.path, "ttl": self.ttl if self.lease_ttl else None,
                  "acquire_timeout": self.ttl + 1.0, "hold_ops": 3, "op_pause": 0.03, "log": self.logs is not None}
        worker = self.workers[name] = _Worker(name, config, self.sink, self.threaded, self.directory)
        return worker

    def live(self) -> list[str]:
        return [name for name, worker in self.workers.items() if not worker.killed]

    def wait_ready(self, timeout: float = 60.0) -> None:
        if not self.sink.wait(lambda: set(self.live()) <= self.sink.ready or self._errors(), timeout):
            raise errors.OperationTimedOut(f"checker workers not ready within {timeout}s: {self._stderr_tail()}")
        if self._errors():
            raise errors.BackendUnavailable(f"a checker worker failed: {self._errors()[0]}")

    def _errors(self) -> list[str]:
        return [f"{w}: {r['error']}" for w, r in self.sink.records if r["k"] == "error"]

    def _stderr_tail(self) -> str:
        tails = []
        for name in self.workers:
            path = os.path.join(self.directory, f"{name}.err")
            if os.path.exists(path):
                with open(path, errors="replace") as err:
                    text = err.read()[-600:].strip()
                if text:
                    tails.append(f"[{name}] {text}")
        return " ".join(tails) or "(no worker output)"

    def holder(self, timeout: float) -> tuple[str, int] | None:
        """A live worker holding the lock (waited for up to ``timeout``), and its fence."""
        found: list[tuple[str, int]] = []

        def someone() -> bool:
            found[:] = [(w, f) for w, f in self.sink.holding.items() if not self.workers[w].killed]
            return bool(found)

        return found[0] if self.sink.wait(someone, timeout) else None

    def stop_workers(self) -> None:
        """Stop every worker (in parallel: each may take a moment to release and leave)."""
        closers = [threading.Thread(target=worker.close) for worker in self.workers.values()]
        for closer in closers:
            closer.start()
        for closer in closers:
            closer.join()

    def close(self) -> None:
        self.stop_workers()
        for proxy in self.proxies.values():
            proxy.stop()
        if self.logs is not None:
            os.makedirs(self.logs, exist_ok=True)
            for name in self.workers:
                path = os.path.join(self.directory, f"{name}.err")
                if os.path.exists(path):
                    shutil.copy(path, os.path.join(self.logs, f"{name}.log"))
        shutil.rmtree(self.directory, ignore_errors=True)

    # -- the nemeses -----------------------------------------------------------------------------

    def phase(self, name: str, seconds: float) -> dict[str, Any]:
        start = time.monotonic()
        faults: list[dict[str, Any]] = []
        deadline = start + seconds
        if name != "none":
            getattr(self, "_" + name.replace("-", "_"))(faults)
        rest = deadline - time.monotonic()
        if rest > 0:
            threading.Event().wait(rest)
        return {"name": name, "start": start, "end": time.monotonic(), "faults": faults}

    def _freeze_holder(self) -> tuple[str, int, float] | None:
        """SIGSTOP a worker while it holds the lock: ``(worker, fence, stopped at)``, or None.

        Holds are short, so a worker seen holding may have released by the time the
        signal lands: its records (drained for a moment after the stop) tell, and then
        it is resumed and another try made -- at most five.
        """
        for _ in range(5):
            found = self.holder(self.ttl * 3 + 5)
            if found is None:
                return None
            victim, fence = found
            process = self.workers[victim].process
            assert process is not None
            pause_process(process)
            at = time.monotonic()
            threading.Event().wait(0.1)  # let the reader drain what the worker wrote before it stopped
            released = any(w == victim and r.get("fence") == fence and r["k"] in ("end", "lost") for w, r in self.sink.records)
            if not released:
                return victim, fence, at
            resume_process(process)
        return None

    def _holder_kill(self, faults: list[dict[str, Any]]) -> None:
        if self.threaded:
            found = self.holder(self.ttl * 3 + 5)
            if found is None:
                return
            victim, fence = found
            at = time.monotonic()
        else:
            frozen = self._freeze_holder()
            if frozen is None:
                return
            victim, fence, at = frozen  # stopped, then killed: it did nothing after ``at``
        self.workers[victim].kill()
        self.kills[victim] = at
        faults.append({"kind": "kill", "at": at, "worker": victim, "fence": fence})
        self.spawn()  # the group stays as large
        self.sink.wait(lambda: any(r["k"] == "grant" and r["at"] > at and w != victim for w, r in self.sink.records), self.ttl + 10)

    def _holder_pause(self, faults: list[dict[str, Any]]) -> None:
        frozen = self._freeze_holder()
        if frozen is None:
            return
        victim, fence, at = frozen
        process = self.workers[victim].process
        assert process is not None
        watchdog = threading.Timer(self.ttl + 5, resume_process, (process,))  # never left stopped
        watchdog.start()
        try:
            threading.Event().wait(self.ttl + 1.0)
        finally:
            watchdog.cancel()
            resume_process(process)
        faults.append({"kind": "pause", "at": at, "worker": victim, "fence": fence, "healed_at": time.monotonic()})
        self.sink.wait(lambda: any(w == victim and r.get("fence") == fence and (r["k"] == "lost" or r.get("why") in ("check", "release"))
                                   for w, r in self.sink.records), 10)

    def _server_restart(self, faults: list[dict[str, Any]]) -> None:
        at = time.monotonic()
        self.server.kill()
        threading.Event().wait(min(1.0, self.ttl / 2))
        self.server.restart()
        healed = time.monotonic()
        fault = {"kind": "restart", "at": at, "healed_at": healed}
        self._await_restoration(fault)
        faults.append(fault)

    def _partition(self, faults: list[dict[str, Any]]) -> None:
        found = self.holder(self.ttl * 3 + 5)
        victim = found[0] if found is not None else self.live()[0]
        proxy = self.proxies[victim]
        at = time.monotonic()
        proxy.stall()
        try:
            threading.Event().wait(self.ttl + 1.0)
        finally:
            proxy.heal()
        fault = {"kind": "partition", "at": at, "worker": victim, "healed_at": time.monotonic()}
        if found is not None:
            fault["fence"] = found[1]
        self._await_restoration(fault)
        faults.append(fault)

    def _node_kill(self, faults: list[dict[str, Any]]) -> None:
        """Kill the node the cluster depends on (leader, master) while a worker holds the lock; restart it later.

        The node stays down for a TTL and a second and until the cluster names
        another primary (bounded), so a failover really happens before it returns.
        """
        self.holder(self.ttl * 3 + 5)
        index = self.server.primary()
        index = 0 if index is None else index
        at = time.monotonic()
        self.server.kill(index)
        threading.Event().wait(self.ttl + 1.0)
        deadline = time.monotonic() + NODE_FAILOVER_WAIT
        while self.server.primary() in (None, index) and time.monotonic() < deadline:
            threading.Event().wait(0.1)
        failed_over = time.monotonic()
        self.server.restart(index)
        fault = {"kind": "node-kill", "at": at, "node": index, "failed_over_at": failed_over, "healed_at": time.monotonic()}
        self._await_restoration(fault)
        faults.append(fault)

    def _observer(self) -> coordactors.Coordinator:
        """A coordinator to look at the group with.  Just after a node came back
        a cluster may refuse new connections a moment (Redis's sentinels can
        report no master while they reconfigure): retried, bounded."""
        deadline = time.monotonic() + 10 + self.ttl
        while True:
            try:
                return coordactors.connect(self.url, f"checker-observer-{uuid.uuid4().hex[:6]}")
            except errors.BackendUnavailable:
                if time.monotonic() >= deadline:
                    raise
                threading.Event().wait(0.2)

    def _await_restoration(self, fault: dict[str, Any]) -> None:
        """Wait (bounded) until every session lost since the fault is restored; then compare the group."""
        at = fault["at"]

        def restored() -> bool:
            lost = {w for w, r in self.sink.records if r["k"] == "session" and r["type"] == "lost" and r["at"] >= at}
            back = {w for w, r in self.sink.records if r["k"] == "session" and r["type"] == "restored" and r["at"] >= at}
            return lost <= back

        self.sink.wait(restored, 10 + self.backoff_max * 3)
        # And the lock goes round again (judged as grant_after_heal): wait for it here, so that a
        # fault in the last phase is not judged on the moment that happens to be left of the run.
        healed = fault["healed_at"]
        self.sink.wait(lambda: any(r["k"] == "grant" and r["at"] > healed for _, r in self.sink.records), self.ttl * 3 + 5)
        expected = {self.workers[w].config["member"] for w in self.live()}
        members: set[str] | None = None
        with self._observer() as observer:
            deadline = time.monotonic() + 5 + self.ttl
            while time.monotonic() < deadline:  # member expiry of a dead session may take up to a TTL
                members = set(observer.members(self.group))
                caps = {m: observer.capabilities(self.group, m) for m in members & expected}
                if members == expected and all(caps[m] == {"worker": m} for m in expected):
                    break
                threading.Event().wait(0.1)
            fault["members"], fault["expected_members"] = members, expected
            # Campaigns came back: some live worker leads.  Watches came back: every live worker hears a newcomer.
            leader = None
            while time.monotonic() < deadline and leader not in expected:
                leader = observer.leader(self.group)
                if leader not in expected:
                    threading.Event().wait(0.1)
            fault["leader"] = leader
            joined_at = time.monotonic()
            observer.join(self.group, {"probe": True})
            live = {w for w in self.live() if self.workers[w].config["member"] in expected}

            def heard() -> set[str]:
                return {w for w, r in self.sink.records if r["k"] == "group" and r["type"] == "joined"
                        and r["member"] == observer.member_id and r["at"] >= joined_at}

            self.sink.wait(lambda: live <= heard(), 5 + self.ttl)
            fault["watch_missing"] = sorted(live - heard())
            observer.leave(self.group)


def _with_options(url: str, options: dict[str, str]) -> str:
    base, _, query = url.partition("?")  # not urlunsplit: it turns memory:// into memory:
    present = {key for key, _ in urllib.parse.parse_qsl(query, keep_blank_values=True)}
    extra = [(k, v) for k, v in options.items() if k not in present]
    query = "&".join(p for p in (query, urllib.parse.urlencode(extra)) if p)
    return f"{base}?{query}" if query else base


def run_check(
    url: str,
    nemeses: tuple[str, ...] | list[str] = ("none", "holder-kill"),
    *,
    workers: int = 3,
    seconds: float = 3.0,
    ttl: float = 2.0,
    server: Any = None,
    logs: str | None = None,
) -> Report:
    """Run one phase per nemesis against ``url`` and judge it.

    Args:
        url: the backend to check; the checker uses a lock and a group of its own (random names).
        nemeses: which phases to run, in order (see :data:`NEMESES`).
        workers: how many workers contend.
        seconds: the least length of a phase (a fault and its recovery may take longer).
        ttl: the session TTL (and lease TTL where the backend has them) the workers use, in seconds.
        server: what serves ``url``, with ``kill()`` and ``restart()`` (same port), e.g. a
            :class:`coordactors.testing.servers.Server`; needed by ``server-restart``.  For
            ``node-kill``, a :class:`coordactors.testing.clusters.Cluster` (``kill(i)``,
            ``restart(i)``, ``primary()``) whose nodes ``url`` names.
        logs: a directory to keep each worker process's log in (``w0.log``...,
            INFO and up, with the monotonic time of each line), for finding out
            why a phase failed.

    A nemesis the backend cannot be given (no server to restart, no TCP for a
    partition, threads cannot be paused alone) is listed in ``Report.skipped`` with why.
    """
    unknown = [n for n in nemeses if n not in NEMESES]
    if unknown:
        raise errors.InvalidArgument(f"unknown nemesis {unknown[0]!r}; known: {', '.join(NEMESES)}")
    if not 2 <= workers <= 32 or not 0 < seconds <= 120 or not 0.5 <= ttl <= 30:
        raise errors.InvalidArgument("workers must be 2..32, seconds 0..120, ttl 0.5..30")
    session_class, options = parse_url(url)
    backoff_max = min(options.backoff_max, 0.5)
    url = _with_options(url, {"session_ttl": f"{ttl:g}", "backoff_initial": "0.05", "backoff_max": f"{backoff_max:g}"})
    threaded = Characteristics.DISTRIBUTED_ACROSS_PROCESSES not in session_class.CHARACTERISTICS
    networked = options.scheme not in LOCAL_SCHEMES and options.host is not None and options.port is not None
    skipped: dict[str, str] = {}
    cluster = isinstance(server, Cluster)
    for name in nemeses:
        if name == "holder-pause" and threaded:
            skipped[name] = "workers are threads of one process here (the backend does not span processes): one cannot be paused alone"
        elif name == "node-kill" and not cluster:
            skipped[name] = "no cluster (the checker kills a node only of a cluster it started: --cluster)"
        elif name == "server-restart" and cluster:
            skipped[name] = "a cluster: node-kill fails one node of it"
        elif name == "partition" and cluster:
            skipped[name] = "several servers: the proxy cuts a client off one server (node-kill fails one instead)"
        elif name == "server-restart" and not networked:
            skipped[name] = "no server: this backend lives in the host's memory or files"
        elif name == "server-restart" and server is None:
            skipped[name] = "no server to restart (the checker restarts only a server it started: --private)"
        elif name == "partition" and not networked:
            skipped[name] = "no network between the workers and this backend"
    phases_wanted = [n for n in nemeses if n not in skipped]
    with coordactors.connect(url, f"checker-probe-{uuid.uuid4().hex[:6]}"):
        pass  # a bad URL or an unreachable backend fails here, with its own error, before any worker starts
    run = _Run(url, workers=workers, ttl=ttl, server=server, proxies="partition" in phases_wanted, threaded=threaded,
               lease_ttl=bool(getattr(session_class, "LEASE_TTL", False)), backoff_max=backoff_max, logs=logs)
    began = time.monotonic()
    try:
        for _ in range(workers):
            run.spawn()
        run.wait_ready()
        phases = []
        for name in phases_wanted:
            if time.monotonic() - began > HARD_LIMIT:
                skipped[name] = f"the check ran out of its {HARD_LIMIT:g} s bound"
                continue
            phases.append(run.phase(name, seconds))
        run_end = time.monotonic()
        run.stop_workers()
        register_log, final = run.register.log(), run.register.state()
    finally:
        run.close()
    records = list(run.sink.records)
    holds = holds_from(records, run.kills, run_end)
    results = [judge_phase(p, holds, register_log, records, ttl, backoff_max) for p in phases]
    worker_errors = [f"{w}: {r['error']}" for w, r in records if r["k"] == "error"]
    if worker_errors and results:
        results[-1]["problems"] += [f"worker error: {e}" for e in worker_errors[:5]]
        results[-1]["ok"] = False
    accepted = sum(1 for op in register_log if op["op"] == "write" and op["outcome"] != "stale")
    lost = sum(1 for op in register_log if op["outcome"] == "lost-update")
    if results and not lost and final["value"] != accepted:
        results[-1]["problems"].append(f"the register holds {final['value']} after {accepted} accepted writes")
        results[-1]["ok"] = False
    return Report(redact(url), workers, ttl, results, skipped, "thread" if threaded else "process")


_PRIVATE = {
    "redis": ("RedisServer", "url"), "zookeeper": ("ZooKeeperServer", "url"), "kazoo": ("ZooKeeperServer", "url"),
    "memcached": ("MemcachedServer", "url"), "postgresql": ("PostgresServer", "url"), "postgres": ("PostgresServer", "url"),
    "mysql": ("MariaDBServer", "url"), "etcd": ("EtcdServer", "url"), "etcd3+http": ("EtcdServer", "url_v3"),
    "etcd3": ("EtcdServer", "url_v3"), "consul": ("FakeConsulAgent", "url"),
}


class _AgentAsServer:
    """The in-repo fake Consul agent seen as a server the nemesis can kill and restart (same port, same store)."""

    def __init__(self) -> None:
        from coordactors.testing.fake_consul import FakeConsulAgent

        self.agent = FakeConsulAgent()
        self.url = ""

    def start(self) -> _AgentAsServer:
        self.agent.start()
        self.url = self.agent.url
        return self

    def kill(self) -> None:
        self.agent.stop()

    def restart(self) -> _AgentAsServer:
        return self.start()

    def stop(self) -> None:
        self.agent.stop()


def private_server(url: str) -> Iterator[tuple[Any, str]]:
    """Start a throw-away server of ``url``'s kind; yield it and the URL to it (``url``'s options kept).

    Consul has no server here: its in-repo fake agent stands in (see coordactors.testing.fake_consul).
    """
    from coordactors.testing import servers

    scheme = url.partition("://")[0].lower()
    if scheme not in _PRIVATE:
        raise errors.InvalidArgument(f"--private starts redis, zookeeper, memcached, postgresql, mysql, etcd or (fake) consul servers, "
                                     f"not {scheme!r}")
    class_name, attribute = _PRIVATE[scheme]
    server = _AgentAsServer() if class_name == "FakeConsulAgent" else getattr(servers, class_name)()
    server.start()
    try:
        base = getattr(server, attribute)
        if scheme == "kazoo":
            base = "kazoo://" + base.partition("://")[2]
        query = urllib.parse.urlsplit(url).query
        yield server, base + (f"?{query}" if query else "")
    finally:
        server.stop()


_CLUSTERS = {
    "zookeeper": ("ZooKeeperEnsemble", "url"), "kazoo": ("ZooKeeperEnsemble", "url"), "etcd": ("EtcdCluster", "url"),
    "etcd3+http": ("EtcdCluster", "url_v3"), "etcd3": ("EtcdCluster", "url_v3"), "redis": ("RedisSentinelCluster", "url"),
}


def private_cluster(url: str) -> Iterator[tuple[Cluster, str]]:
    """Start a throw-away cluster of ``url``'s kind; yield it and the URL naming its nodes (``url``'s options kept).

    ZooKeeper: a 3-server ensemble; etcd: a 3-member cluster; Redis: a primary, a
    replica and 3 Sentinels (the URL resolves the master through them).
    """
    from coordactors.testing import clusters

    scheme = url.partition("://")[0].lower()
    if scheme not in _CLUSTERS:
        raise errors.InvalidArgument(f"--cluster starts zookeeper, etcd, etcd3+http or redis (Sentinel) clusters, not {scheme!r}")
    class_name, attribute = _CLUSTERS[scheme]
    cluster = getattr(clusters, class_name)()
    cluster.start()
    try:
        base = getattr(cluster, attribute)
        if scheme == "kazoo":
            base = "kazoo://" + base.partition("://")[2]
        yield cluster, _with_options(base, dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query, keep_blank_values=True)))
    finally:
        cluster.stop()


def main(argv: list[str] | None = None) -> int:
    """``coordactors check URL [--nemesis ...]``: run the checker; 0 when safe, 1 when not, 64 on bad usage, 69 when unreachable."""
    parser = argparse.ArgumentParser(prog="coordactors check", description="Check a backend's locks under faults.")
    parser.add_argument("url", help="backend URL, e.g. redis://127.0.0.1:6379 (with --private: just the scheme, e.g. redis://)")
    parser.add_argument("--nemesis", default=None,
                        help=f"comma-separated phases, or 'all' ({', '.join(NEMESES)}); default none,holder-kill,holder-pause "
                             "and partition, or node-kill with --cluster")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="least length of each phase")
    parser.add_argument("--ttl", type=float, default=2.0, help="session/lease TTL the workers use")
    parser.add_argument("--private", action="store_true", help="start a throw-away server of the URL's kind (enables server-restart)")
    parser.add_argument("--cluster", action="store_true",
                        help="start a throw-away cluster of the URL's kind: zookeeper, etcd, etcd3+http, redis (Sentinel); enables node-kill")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--logs", metavar="DIR", help="keep each worker process's log (INFO and up) in DIR")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return 0 if exc.code == 0 else 64
    if args.nemesis is None:
        args.nemesis = "none,holder-kill,holder-pause," + ("node-kill" if args.cluster else "partition")
    nemeses = list(NEMESES) if args.nemesis == "all" else [n.strip() for n in args.nemesis.split(",") if n.strip()]
    try:
        if args.private and args.cluster:
            raise errors.InvalidArgument("--private and --cluster exclude each other")
        if args.private or args.cluster:
            context = private_cluster(args.url) if args.cluster else private_server(args.url)
            server, url = next(context)
            try:
                report = run_check(url, nemeses, workers=args.workers, seconds=args.seconds, ttl=args.ttl, server=server, logs=args.logs)
            finally:
                context.close()
        else:
            report = run_check(args.url, nemeses, workers=args.workers, seconds=args.seconds, ttl=args.ttl, logs=args.logs)
    except errors.InvalidArgument as exc:
        print(f"coordactors check: {exc}", file=sys.stderr)
        return 64
    except errors.CoordinationError as exc:
        print(f"coordactors check: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 69
    print(json.dumps(report.as_dict(), indent=2, default=sorted) if args.json else report.text())
    return 0 if report.ok else 1
