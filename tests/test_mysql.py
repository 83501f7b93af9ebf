"""mysql://: what only MySQL/MariaDB can do to a session.

The behaviour suite (test_groups, test_locks, ...) runs on MariaDB through
conftest's ``mysql`` row, and test_faults kills and pauses a private server;
these tests reach behind the session with a raw PyMySQL connection to play
the part of the server (killing a connection, expiring a member) and of
other users of the database (a foreign table, a user with a password).
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pymysql  # type: ignore[import-untyped]
import pytest
from helpers import wait_until

import coordactors
from coordactors import errors
from coordactors.backend_actors.mysql import lock_key, table_columns
from coordactors.events import LockLost, MemberJoined, MemberLeft, SessionLost, SessionRestored
from coordactors.messages import Acquire, Release
from coordactors.testing import EventRecorder
from coordactors.testing.pytest_plugin import mariadb_server
from coordactors.testing.servers import MariaDBServer

FAST = "heartbeat_interval=0.05&backoff_initial=0.05&backoff_max=0.2"


def _with(url: str, options: str) -> str:
    return url + ("&" if "?" in url else "?") + options


@pytest.fixture
def namespace() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def url(mariadb_server: MariaDBServer, namespace: str) -> str:
    """A private namespace on the shared MariaDB."""
    return f"{mariadb_server.url}?namespace={namespace}"


@pytest.fixture
def raw(mariadb_server: MariaDBServer) -> Iterator[Any]:
    """A plain PyMySQL connection to the ``test`` database: the server itself, and other users."""
    conn = pymysql.connect(host=mariadb_server.host, port=mariadb_server.port, user="root", password="", database="test",
                           autocommit=True, ssl_disabled=True, connect_timeout=5, read_timeout=5, write_timeout=5)
    yield conn
    conn.close()


def _q(conn: Any, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
    with conn.cursor() as cursor:
        cursor.execute(sql, args)
        return list(cursor.fetchall())


def _own_events(coord: coordactors.Coordinator) -> EventRecorder:
    recorder = EventRecorder()
    coord.subscribe(recorder)
    return recorder


def _restored(events: list[Any]) -> bool:
    return any(isinstance(e, SessionRestored) for e in events)


def _kill_holder(raw: Any, namespace: str, lock: str) -> None:
    """KILL the connection holding ``lock`` (as a DBA, or a proxy timing out, would)."""
    (connection_id,), = _q(raw, "SELECT IS_USED_LOCK(%s)", (lock_key("test", "coordactors_", namespace, lock),))
    assert connection_id is not None
    _q(raw, f"KILL CONNECTION {int(connection_id)}")


# -- URLs and connecting -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("session_ttl=none", "session_ttl"),
        ("namespace=", "namespace"),
        ("namespace=" + "x" * 65, "namespace"),
        ("table_prefix=bad-prefix", "table_prefix"),
        ("table_prefix=" + "p" * 33, "table_prefix"),
        ("timeout=0", "timeout"),
        ("event_retention=-5", "event_retention"),
        ("lock_delay=soon", "lock_delay"),
        ("bogus=1", "bogus"),
    ],
)
def test_malformed_options_are_refused_naming_them(mariadb_server, query, named):
    with pytest.raises(errors.InvalidArgument) as caught:
        coordactors.connect(f"{mariadb_server.url}?{query}", "a")
    assert named in str(caught.value)


@pytest.mark.parametrize("path", ["", "/", "/a/b"])
def test_a_url_must_name_exactly_one_database(mariadb_server, path):
    base = mariadb_server.url.rpartition("/")[0]
    with pytest.raises(errors.InvalidArgument) as caught:
        coordactors.connect(base + path, "a")
    assert "database" in str(caught.value)


def test_a_wrong_password_is_a_clear_error_that_never_shows_the_password(mariadb_server, raw):
    user, password, wrong = f"u{uuid.uuid4().hex[:8]}", "Right-pw-4711", "Wr0ng-s3cret-9931"
    _q(raw, f"CREATE USER '{user}'@'%%' IDENTIFIED BY %s", (password,))
    _q(raw, f"GRANT ALL ON test.* TO '{user}'@'%'")
    try:
        base = f"mysql://{user}:{{}}@{mariadb_server.host}:{mariadb_server.port}/test?namespace=t{uuid.uuid4().hex[:8]}"
        with pytest.raises(errors.BackendUnavailable) as caught:
            coordactors.connect(base.format(wrong), "a")
        message = str(caught.value)
        assert "access denied" in message.lower() and "password" in message
        for text in (message, repr(caught.value), repr(caught.value.__cause__), str(caught.value.backend)):
            assert wrong not in text

        coord = coordactors.connect(base.format(password), "a")  # the right one works
        try:
            coord.join("g", create=True)
            assert password not in repr(coord) and password not in str(coord.statistics())
        finally:
            coord.stop()
    finally:
        _q(raw, f"DROP USER '{user}'@'%'")


def test_a_database_that_does_not_exist_is_a_clear_error(mariadb_server):
    base = mariadb_server.url.rpartition("/")[0]
    with pytest.raises(errors.BackendUnavailable) as caught:
        coordactors.connect(f"{base}/no_such_db_here", "a")
    assert "no_such_db_here" in str(caught.value) and "does not exist" in str(caught.value)


def test_a_table_left_in_a_foreign_format_is_refused_and_left_untouched(mariadb_server, raw):
    prefix = f"f{uuid.uuid4().hex[:8]}_"
    _q(raw, f"CREATE TABLE `{prefix}locks` (id INT PRIMARY KEY, owner VARCHAR(20))")
    _q(raw, f"INSERT INTO `{prefix}locks` VALUES (1, 'someone else')")
    try:
        with pytest.raises(errors.InvalidArgument) as caught:
            coordactors.connect(f"{mariadb_server.url}?table_prefix={prefix}", "a")
        assert f"{prefix}locks" in str(caught.value) and "left untouched" in str(caught.value)
        assert _q(raw, f"SELECT * FROM `{prefix}locks`") == [(1, "someone else")]
        # Nothing else was created either: the check comes before any CREATE.
        assert _q(raw, "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = 'test' AND TABLE_NAME LIKE %s",
                  (prefix + "%",)) == [(f"{prefix}locks",)]
    finally:
        _q(raw, f"DROP TABLE `{prefix}locks`")


def test_tables_are_created_on_first_use_under_their_prefix(mariadb_server, raw, coordinators):
    prefix = f"p{uuid.uuid4().hex[:8]}_"
    try:
        coord = coordinators("a", f"{mariadb_server.url}?table_prefix={prefix}")
        coord.join("g", create=True)
        rows = _q(raw, "SELECT TABLE_NAME, ENGINE, TABLE_COLLATION FROM information_schema.TABLES "
                       "WHERE TABLE_SCHEMA = 'test' AND TABLE_NAME LIKE %s", (prefix + "%",))
        assert sorted(r[0] for r in rows) == sorted(prefix + t for t in table_columns())
        assert {(r[1], r[2]) for r in rows} == {("InnoDB", "utf8mb4_bin")}
        other = coordinators("b", f"{mariadb_server.url}")  # the default prefix: another world
        with pytest.raises(errors.GroupNotFound):
            other.members("g")
    finally:
        for table in table_columns():
            _q(raw, f"DROP TABLE IF EXISTS `{prefix}{table}`")


def test_a_per_lease_ttl_is_refused_as_a_lock_lives_with_the_connection(coordinators, url):
    coord = coordinators("a", url)
    with pytest.raises(errors.NotSupported):
        coord.ask(Acquire("jobs", ttl=5), block=True, timeout=10)


# -- locks and fences -------------------------------------------------------------------------


def test_fences_increase_across_holders_and_after_the_fence_row_is_deleted(coordinators, url, raw, namespace):
    a, b = coordinators("a", url), coordinators("b", url)
    fences = []
    for coord in (a, b, a, b):
        lease = coord.ask(Acquire("jobs", timeout=5), block=True, timeout=10)
        fences.append(lease.fence)
        coord.ask(Release(lease), block=True, timeout=10)
    assert [f - fences[0] for f in fences] == [0, 1, 2, 3]  # LAST_INSERT_ID(fence + 1), one per grant
    _q(raw, "DELETE FROM coordactors_locks WHERE namespace = %s", (namespace.encode(),))  # someone emptied it
    again = a.ask(Acquire("jobs", timeout=5), block=True, timeout=10)
    assert again.fence > fences[-1]  # re-seeded from the clock-derived floor


@pytest.mark.parametrize("name", ["with 'quotes' and \"double\" and \\", "grüppe ✓ 🔒", "é" * 128, "x" * 256, "a/../b"])
def test_any_name_maps_to_a_short_server_lock_and_round_trips(coordinators, url, raw, namespace, name):
    key = lock_key("test", "coordactors_", namespace, name)
    assert len(key) <= 64
    a, b = coordinators(name, url), coordinators("b", url)
    a.join(name, {"n": name}, create=True)
    a.campaign(name)
    lease = a.ask(Acquire(name), block=True, timeout=10)
    assert _q(raw, "SELECT IS_USED_LOCK(%s) IS NOT NULL", (key,)) == [(1,)]
    assert b.members(name) == {name}
    assert b.capabilities(name, name) == {"n": name}
    assert name in b.groups()
    wait_until(lambda: b.leader(name) == name)
    with pytest.raises(errors.LockTimeout):
        b.ask(Acquire(name, timeout=0), block=True, timeout=10)
    a.ask(Release(lease), block=True, timeout=10)
    assert _q(raw, "SELECT IS_USED_LOCK(%s)", (key,)) == [(None,)]


def _assert_held_with_their_fences(leases: list[Any], names: list[str], raw: Any, namespace: str, other: Any) -> None:
    """``leases`` are of ``names``, in order, with the fences their rows hold, and nobody else gets them."""
    assert [lease.name for lease in leases] == names
    rows = dict(_q(raw, "SELECT name, fence FROM coordactors_locks WHERE namespace = %s", (namespace.encode(),)))
    assert {name: rows[name.encode()] for name in names} == {lease.name: lease.fence for lease in leases}
    for name in names:
        with pytest.raises(errors.LockTimeout):
            other.ask(Acquire(name, timeout=0), block=True, timeout=10)


def test_batched_acquires_and_releases_of_any_names_keep_their_names_and_fences(coordinators, url, raw, namespace, monkeypatch):
    # Requests queued together are served by one multi-statement query whose
    # values are inline literals: names that need quoting must still be the
    # locks' names, with their own fences.
    from coordactors.backend_actors.mysql import MySQLSession

    runs: list[list[str]] = []
    flush = MySQLSession.flush_batch

    def recorded(self: Any, run: Any) -> None:
        runs.append([type(call.message).__name__ for call, _item in run])
        flush(self, run)

    monkeypatch.setattr(MySQLSession, "flush_batch", recorded)
    given_back: list[list[str]] = []  # a batch that failed gives its locks back and serves its calls one by one
    monkeypatch.setattr(MySQLSession, "_give_back", lambda self, names: given_back.append(names) if names else None)
    names = ["it's", 'say "hi"', "back\\slash", "grüppe ✓ 🔒", "semi; DROP TABLE x", "%s %(x)s"]
    coord, other = coordinators("batcher", url), coordinators("other", url)
    for _ in range(20):  # until the session took the acquires queued together in one batch (nearly always the first round)
        futures = [coord.ask(Acquire(name)) for name in names]
        leases = [future.get(timeout=10) for future in futures]
        _assert_held_with_their_fences(leases, names, raw, namespace, other)
        for name in names:
            assert _q(raw, "SELECT IS_USED_LOCK(%s) IS NOT NULL", (lock_key("test", "coordactors_", namespace, name),)) == [(1,)]
        for future in [coord.ask(Release(lease)) for lease in leases]:
            future.get(timeout=10)
        for name in names:
            assert _q(raw, "SELECT IS_USED_LOCK(%s)", (lock_key("test", "coordactors_", namespace, name),)) == [(None,)]
        if any(run.count("Acquire") > 1 for run in runs) and any(run.count("Release") > 1 for run in runs):
            break
    assert any(run.count("Acquire") > 1 for run in runs) and any(run.count("Release") > 1 for run in runs), runs
    assert not given_back


def _queue_behind_a_stalled_request(coord: Any, monkeypatch: Any, names: list[str]) -> list[Any]:
    """Hold the session in a request while ``names`` are asked for, so they
    are queued together when it comes back; their reply futures."""
    from coordactors.backend_actors.mysql import MySQLSession
    from coordactors.messages import GetGroups

    entered, go_on = threading.Event(), threading.Event()
    get_groups = MySQLSession.do_get_groups

    def stalled(self: Any) -> Any:
        entered.set()
        assert go_on.wait(10)
        return get_groups(self)

    monkeypatch.setattr(MySQLSession, "do_get_groups", stalled)
    stall = coord.submit(GetGroups())
    assert entered.wait(10)
    futures = [coord.ask(Acquire(name)) for name in names]
    go_on.set()
    stall.result(timeout=10)
    return futures


def test_batches_queued_while_one_is_in_flight_are_pipelined_on_the_connection(coordinators, url, raw, namespace, monkeypatch):
    from coordactors.backend_actors import mysql

    monkeypatch.setattr(mysql.MySQLSession, "MAX_BATCH", 4)
    in_flight: list[int] = []
    most = [0]
    send, read = mysql.send_query, mysql.read_answers

    def sent(conn: Any, sql: str) -> None:
        send(conn, sql)
        in_flight.append(1)
        most[0] = max(most[0], len(in_flight))

    def answered(conn: Any, statements: int) -> Any:
        in_flight.pop()
        return read(conn, statements)

    monkeypatch.setattr(mysql, "send_query", sent)
    monkeypatch.setattr(mysql, "read_answers", answered)
    coord, other = coordinators("piper", url), coordinators("other", url)
    names = [f"pipe-{i}" for i in range(12)]
    leases = [future.get(timeout=10) for future in _queue_behind_a_stalled_request(coord, monkeypatch, names)]
    assert most[0] == 2  # the queued acquires went out while the first four's answer was due
    _assert_held_with_their_fences(leases, names, raw, namespace, other)
    for future in [coord.ask(Release(lease)) for lease in leases]:
        future.get(timeout=10)
    assert [other.ask(Acquire(name, timeout=0), block=True, timeout=10).name for name in names] == names


def test_a_batch_that_fails_while_the_next_is_in_flight_is_served_one_by_one(coordinators, url, raw, namespace, monkeypatch):
    # The first batch's INSERT fails after its GET_LOCKs took the locks; the
    # batch behind it, already sent, is still read and answered; then the
    # failed one's locks are given back and its acquires served the usual way.
    from coordactors.backend_actors import mysql

    monkeypatch.setattr(mysql.MySQLSession, "MAX_BATCH", 4)
    batch_query = mysql.MySQLSession._batch_query
    broken: list[str] = []

    def first_one_broken(self: Any, run: Any) -> Any:
        sql, statements = batch_query(self, run)
        if not broken and statements == 3:
            sql = sql.replace("INSERT INTO", "INSERT INTO no_such_table_", 1)
            broken.append(sql)
        return sql, statements

    monkeypatch.setattr(mysql.MySQLSession, "_batch_query", first_one_broken)
    coord, other = coordinators("piper", url), coordinators("other", url)
    names = [f"fail-{i}" for i in range(12)]
    leases = [future.get(timeout=10) for future in _queue_behind_a_stalled_request(coord, monkeypatch, names)]
    assert broken
    _assert_held_with_their_fences(leases, names, raw, namespace, other)
    stats = coord.statistics()
    assert stats["restarts"] == 0 and stats["leases"] == 12  # the connection stayed in step with its answers


def test_a_flush_left_by_an_error_answers_every_caller_and_drops_the_connection(coordinators, url, monkeypatch):
    # An unexpected error while a batch is answered, with the next one in
    # flight: nobody may read the answers still due, and no caller may be
    # left waiting.
    from coordactors.backend_actors import mysql

    monkeypatch.setattr(mysql.MySQLSession, "MAX_BATCH", 4)
    settle = mysql.MySQLSession._settle_batch
    raised: list[int] = []

    def first_one_raises(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not raised:
            raised.append(1)
            raise RuntimeError("a bug while answering a batch")
        return settle(self, *args, **kwargs)

    monkeypatch.setattr(mysql.MySQLSession, "_settle_batch", first_one_raises)
    coord = coordinators("piper", url)
    names = [f"bug-{i}" for i in range(12)]
    outcomes = []
    for future in _queue_behind_a_stalled_request(coord, monkeypatch, names):
        try:
            outcomes.append(future.get(timeout=10).name)
        except errors.BackendUnavailable as exc:
            outcomes.append(type(exc).__name__)
    assert raised and "BackendUnavailable" in outcomes[:4]  # the batch being answered: told, not left waiting

    def restarted() -> bool:
        try:
            return coord.statistics(timeout=5)["restarts"] >= 1 and coord.statistics(timeout=5)["state"] == "CONNECTED"
        except errors.BackendUnavailable:  # between the crash and the new session
            return False

    wait_until(restarted, timeout=10)
    assert coord.ask(Acquire("after", timeout=5), block=True, timeout=10).name == "after"


def test_a_waiting_acquire_never_stalls_the_sessions_other_requests(coordinators, url):
    holder, waiter = coordinators("holder", url), coordinators("waiter", url)
    holder.ask(Acquire("jobs"), block=True, timeout=10)
    waiting = waiter.submit(Acquire("jobs", timeout=30))
    wait_until(lambda: waiter.statistics()["waiting"] == 1)
    started = time.monotonic()
    waiter.join("g", create=True)
    assert waiter.members("g") == {"waiter"}
    assert time.monotonic() - started < 1.0  # GET_LOCK(name, 0): no statement waits for the lock
    holder.stop()  # its connection closes: the server frees the lock, the next poll takes it
    assert waiting.result(timeout=10).member_id == "waiter"


def test_a_killed_connection_loses_its_locks_and_the_session_is_restored(coordinators, url, raw, namespace):
    holder, other = coordinators("holder", _with(url, FAST)), coordinators("other", url)
    own = _own_events(holder)
    holder.join("g", {"v": 1}, create=True)
    lease = holder.ask(Acquire("jobs"), block=True, timeout=10)
    _kill_holder(raw, namespace, "jobs")

    own.wait_for(lambda events: _restored(events))
    kinds = [type(e) for e in own.events]
    assert kinds[:2] == [SessionLost, LockLost] and SessionRestored in kinds, own.events
    assert lease.lost.is_set()
    assert other.members("g") == {"holder"}  # reclaimed by the same session token, not re-joined
    assert other.capabilities("g", "holder") == {"v": 1}
    assert other.ask(Acquire("jobs", timeout=5), block=True, timeout=10).fence > lease.fence


def test_lock_delay_grants_nothing_while_the_server_has_been_up_less_than_that(coordinators, url, raw):
    (uptime,), = _q(raw, "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'UPTIME'")
    delayed = coordinators("a", _with(url, f"lock_delay={int(uptime) + 1.5}"))  # uptime counts whole seconds
    with pytest.raises(errors.LockTimeout):
        delayed.ask(Acquire("jobs", timeout=0), block=True, timeout=10)
    # A waiting acquire is granted once the delay is over (retried on every poll).
    assert delayed.ask(Acquire("jobs", timeout=10), block=True, timeout=15).member_id == "a"


# -- members: expiry -------------------------------------------------------------------------


def test_a_member_past_its_expiry_is_reaped_with_a_leave_event(coordinators, url, raw, namespace):
    observer = coordinators("observer", _with(url, FAST))
    observed = EventRecorder()
    observer.join("g", create=True)
    observer.watch("g", observed)
    # A member whose process died: its row stays, its expiry passes.
    _q(raw, "INSERT INTO coordactors_members VALUES (%s, 'g', 'ghost', 'dead-token', '{}', UTC_TIMESTAMP(6) - INTERVAL 1 SECOND)",
       (namespace.encode(),))
    assert observer.members("g") == {"observer"}  # readers ignore it at once
    observed.wait_for_event(MemberLeft("g", "ghost"))
    assert _q(raw, "SELECT COUNT(*) FROM coordactors_members WHERE namespace = %s AND member = 'ghost'", (namespace.encode(),)) == [(0,)]


def test_a_membership_removed_under_a_live_session_makes_it_rejoin(coordinators, url, raw, namespace):
    member, observer = coordinators("m", _with(url, FAST)), coordinators("observer", _with(url, FAST))
    own, observed = _own_events(member), EventRecorder()
    member.join("g", {"v": 1}, create=True)
    observer.watch("g", observed)
    _q(raw, "DELETE FROM coordactors_members WHERE namespace = %s AND member = 'm'", (namespace.encode(),))

    own.wait_for(_restored)  # the heartbeat refreshed fewer rows than it holds
    assert "expired" in own.of_type(SessionLost)[0].cause
    observed.wait_for_event(MemberJoined("g", "m"))
    assert observer.capabilities("g", "m") == {"v": 1}


# -- events ------------------------------------------------------------------------------------


def test_each_event_is_a_row_written_with_its_change(coordinators, url, raw, namespace):
    coord = coordinators("a", url)
    coord.join("g", create=True)
    coord.campaign("g")
    wait_until(lambda: coord.leader("g") == "a")
    coord.leave("g")
    rows = _q(raw, "SELECT kind, member FROM coordactors_events WHERE namespace = %s AND group_name = 'g' ORDER BY id",
              (namespace.encode(),))
    assert rows == [("join", b"a"), ("leader", b"a"), ("leave", b"a")]


def test_a_watcher_whose_connection_dropped_still_gets_every_event_in_order(coordinators, url, raw, namespace):
    watcher, actor = coordinators("watcher", _with(url, FAST)), coordinators("actor", url)
    own, observed = _own_events(watcher), EventRecorder()
    watcher.join("g", create=True)
    watcher.watch("g", observed)
    watcher.ask(Acquire("handle"), block=True, timeout=10)  # to find its connection
    _kill_holder(raw, namespace, "handle")
    for _ in range(3):  # while it is down (or just restored): the log keeps them
        actor.join("g")
        actor.leave("g")
    own.wait_for(_restored)
    observed.wait_for(lambda events: len([e for e in events if e.group == "g" and e.member == "actor"]) >= 6)
    seen = [e for e in observed.events if isinstance(e, (MemberJoined, MemberLeft)) and e.member == "actor"]
    assert seen == [MemberJoined("g", "actor"), MemberLeft("g", "actor")] * 3


def test_events_of_two_groups_interleaved_arrive_complete_and_per_group_in_order(coordinators, url):
    watcher = coordinators("watcher", url)
    observed = EventRecorder()
    for group in ("g1", "g2"):
        watcher.create_group(group)
        watcher.watch(group, observed)
    writers = [coordinators(f"w{i}", url) for i in range(3)]

    def churn(coord: coordactors.Coordinator) -> None:
        for i in range(4):
            group = ("g1", "g2")[i % 2]
            coord.join(group)
            coord.leave(group)

    threads = [threading.Thread(target=churn, args=(w,)) for w in writers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    observed.wait_for(lambda events: len(events) >= 24)
    for coord in writers:
        for group in ("g1", "g2"):
            mine = [type(e) for e in observed.events if e.member == coord.member_id and e.group == group]
            assert mine == [MemberJoined, MemberLeft] * 2


# -- resources ---------------------------------------------------------------------------------


def test_connect_and_stop_cycles_leave_no_thread_or_fd_behind(url):
    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    warm = coordactors.connect(url, "warm")  # the runtime's own threads start once
    warm.stop()
    threads_before, fds_before = threading.active_count(), fds()
    started = time.monotonic()
    for i in range(200):
        coord = coordactors.connect(url, f"m{i}")
        if i % 20 == 0:
            coord.join("g", create=True)
            coord.ask(Acquire("jobs"), block=True, timeout=10)
        coord.stop()
    assert time.monotonic() - started < 60
    wait_until(lambda: threading.active_count() <= threads_before, timeout=10)
    wait_until(lambda: fds() <= fds_before, timeout=10, message=lambda: f"{fds()} fds, {fds_before} before")


def test_a_stalled_holder_loses_its_lock_and_membership_after_session_ttl(coordinators, url):
    import signal

    from test_cross_process import Child

    observer = coordinators("observer", _with(url, FAST))
    observed = EventRecorder()
    observer.join("g", create=True)
    observer.watch("g", observed)
    child = Child(_with(url, "session_ttl=1"), "stalled")
    try:
        child.do("join", group="g")
        child.do("acquire", name="jobs")
        os.kill(child.process.pid, signal.SIGSTOP)  # its socket stays open: only wait_timeout frees the lock
        stopped_at = time.monotonic()
        lease = observer.ask(Acquire("jobs", timeout=20), block=True, timeout=25)
        assert 0.5 < time.monotonic() - stopped_at < 10
        assert lease.member_id == "observer"
        observed.wait_for_event(MemberLeft("g", "stalled"))  # its row expired and was reaped
    finally:
        child.close()


def test_the_heartbeat_finds_exactly_the_locks_the_connection_no_longer_holds(coordinators: Any, url: str) -> None:
    from coordactors.messages import Heartbeat

    coord = coordinators("holder", url)
    own = _own_events(coord)
    leases = [coord.ask(Acquire(f"job-{i}"), block=True, timeout=10) for i in range(40)]
    session = coord._route.session._actor_weakref()
    done = threading.Event()

    def give_up_behind_the_sessions_back() -> None:  # on the actor thread, on its own connection
        for index in (3, 17):
            session._one("SELECT RELEASE_LOCK(%s)", (session._key(f"job-{index}"),))
        done.set()

    session.run_on_actor(give_up_behind_the_sessions_back)
    assert done.wait(10)
    coord.ask(Heartbeat(), block=True, timeout=10)
    own.wait_for(lambda events: len([e for e in events if isinstance(e, LockLost)]) >= 2, timeout=10)
    assert sorted(e.name for e in own.events if isinstance(e, LockLost)) == ["job-17", "job-3"]
    assert [lease.name for lease in leases if lease.lost.is_set()] == ["job-3", "job-17"]
    assert coord.statistics()["leases"] == 38
