"""The soak job: long, bounded runs with faults; no growth in threads, descriptors or memory.

Not part of the default run (``-m "not soak"`` in pyproject.toml).  Run it with::

    python3 -m pytest -m soak tests/test_soak.py          # about 10 minutes
    COORDACTORS_SOAK_SECONDS=60 python3 -m pytest -m soak tests/test_soak.py   # a shorter one
"""

from __future__ import annotations

import gc
import os
import random
import threading
import uuid
from typing import Any

import pytest
from helpers import wait_until
from test_hygiene import _assert_no_growth, _fds, _rss_kib, _threads

import coordactors
from coordactors import errors
from coordactors.messages import Acquire, Release
from coordactors.testing.faults import Proxy, bounded_faults
from coordactors.testing.servers import RedisServer

pytestmark = [pytest.mark.soak, pytest.mark.timeout(1800)]

SOAK_SECONDS = float(os.environ.get("COORDACTORS_SOAK_SECONDS", "300"))


def test_a_thousand_connect_stop_cycles_on_every_backend(backend_url: str) -> None:
    _assert_no_growth(backend_url, warmup=20, count=1000)


def _work(url: str, member: str, stop: threading.Event, failures: list[str]) -> None:
    """Connect, join, lock, release, leave, stop -- over and over, through whatever faults come."""
    while not stop.is_set():
        try:
            with coordactors.connect(url, member) as coord:
                coord.join("soak", {"m": member}, create=True, timeout=10)
                for _ in range(random.randint(1, 20)):
                    try:
                        lease = coord.ask(Acquire("soak-lock", timeout=1), block=True, timeout=15)
                    except (errors.LockTimeout, errors.OperationTimedOut, errors.BackendUnavailable):
                        continue
                    try:
                        coord.ask(Release(lease), block=True, timeout=15)
                    except (errors.LockNotHeld, errors.LockLost, errors.OperationTimedOut, errors.BackendUnavailable):
                        pass
        except errors.CoordinationError:
            stop.wait(0.05)  # a fault hit connect/join/stop: expected, go round again
        except Exception as exc:  # noqa: BLE001  (anything else is a bug)
            failures.append(f"{member}: {type(exc).__name__}: {exc}")
            return


def test_five_minutes_of_work_under_faults_grows_nothing(tmp_path: Any) -> None:
    with RedisServer() as server, Proxy("127.0.0.1", server.port) as proxy:
        namespace = f"soak{uuid.uuid4().hex[:6]}"
        options = f"namespace={namespace}&session_ttl=2&socket_timeout=0.5&backoff_initial=0.05&backoff_max=0.5&connect_timeout=2"
        urls = [f"{proxy.url_for(server.url)}?{options}", f"memory://{namespace}", f"file://{tmp_path}/coord?session_ttl=2"]
        failures: list[str] = []

        def fault(i: int, stop: threading.Event) -> None:
            kind = i % 4
            if kind == 0:
                proxy.reset_connections()
            elif kind == 1:
                proxy.stall()
                stop.wait(3.0)  # longer than the TTL: sessions and leases are lost
                proxy.heal()
            elif kind == 2:
                server.pause()
                try:
                    stop.wait(1.0)
                finally:
                    server.resume()
            else:
                proxy.delay(0.2)
                stop.wait(2.0)
                proxy.heal()

        def phase(seconds: float) -> int:
            """Six workers on three backends for ``seconds``, faults on the networked one; all stopped after."""
            stop = threading.Event()
            workers = [threading.Thread(target=_work, args=(url, f"w{i}-{n}", stop, failures), daemon=True)
                       for i, url in enumerate(urls) for n in range(2)]
            for worker in workers:
                worker.start()
            try:
                return bounded_faults(lambda i: fault(i, stop), max_count=10_000, max_seconds=seconds,
                                      between=lambda i: stop.wait(1.0))
            finally:
                proxy.heal()
                stop.set()
                for worker in workers:
                    worker.join(60)

        phase(min(30.0, SOAK_SECONDS / 5))  # warm-up: imports, pools, the runtime's threads
        gc.collect()
        threads, fds, rss = _threads(), _fds(), _rss_kib()
        count = phase(SOAK_SECONDS)
        assert not failures, failures
        assert count >= 4
        gc.collect()
        wait_until(lambda: _threads() <= threads and _fds() <= fds, timeout=30,
                   message=lambda: f"threads {threads} -> {_threads()}, fds {fds} -> {_fds()}: {[t.name for t in threading.enumerate()]}")
        assert _rss_kib() - rss < 32 * 1024, f"RSS grew by {_rss_kib() - rss} KiB in {SOAK_SECONDS:g} s"
