"""PostgreSQL-specific behaviour, against a real server started by the harness (trust auth)."""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid

import psycopg2
import pytest
from helpers import BusySession, check_a_watch_wakes_a_resting_reader, wait_until

import coordactors
from coordactors import errors
from coordactors.backend_actors import postgresql as pg
from coordactors.backend_actors.postgresql import events_in_notes, events_note, lock_key
from coordactors.events import LockLost, MemberJoined, MemberLeft, SessionLost, SessionRestored
from coordactors.messages import Acquire, Release
from coordactors.testing import EventRecorder

SECRET = "Sup3rSecretPw"


@pytest.fixture
def namespace():
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def url(postgres_server, namespace):
    return f"{postgres_server.url}?namespace={namespace}"


@pytest.fixture
def raw(postgres_server):
    conn = psycopg2.connect(host=postgres_server.host, port=postgres_server.port, user="postgres", dbname="postgres")
    conn.autocommit = True
    yield conn
    conn.close()


def _one(raw, query, params=()):
    with raw.cursor() as cur:
        cur.execute(query, params)
        return cur.fetchone()


def _all(raw, query, params=()):
    with raw.cursor() as cur:
        cur.execute(query, params)
        return cur.fetchall()


def _pid_of(raw, member):
    row = _one(raw, "SELECT pid FROM pg_stat_activity WHERE application_name = %s ORDER BY backend_start LIMIT 1",
               (f"coordactors[{member}]",))
    return row[0]


# -- URLs, credentials, foreign data ------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "part"),
    [
        ("postgresql://127.0.0.1:5432", "database name"),
        ("postgresql://127.0.0.1:5432/", "database name"),
        ("postgresql://127.0.0.1:5432/a/b", "database name"),
        ("postgresql:///db", "host"),
        ("postgresql://127.0.0.1:99999/db", "port"),
        ("postgresql://127.0.0.1/db?table_prefix=1abc", "table_prefix"),
        ("postgresql://127.0.0.1/db?table_prefix=a-b", "table_prefix"),
        ("postgresql://127.0.0.1/db?query_timeout=0", "query_timeout"),
        ("postgresql://127.0.0.1/db?session_ttl=none", "session_ttl"),
        ("postgresql://127.0.0.1/db?lease_ttl=5", "lease_ttl"),
        ("postgresql://127.0.0.1/db?bogus=1", "bogus"),
    ],
)
def test_malformed_urls_and_options_are_invalid_arguments_naming_the_part(bad, part):
    with pytest.raises(errors.InvalidArgument, match=part):
        coordactors.connect(bad, "a")


def test_an_explicit_lease_ttl_is_not_supported(coordinators, url):
    coord = coordinators("a", url)
    with pytest.raises(errors.NotSupported, match="session"):
        coord.ask(Acquire("jobs", ttl=5), block=True, timeout=10)


def test_a_role_that_does_not_exist_is_refused_without_showing_the_password(postgres_server, caplog):
    # The harness server trusts every local connection, so a WRONG password for
    # an existing role cannot be refused here (that needs md5/scram in pg_hba);
    # a role that does not exist is refused at login the same way.
    caplog.set_level(logging.DEBUG)
    url = f"postgresql://nosuchrole:{SECRET}@{postgres_server.host}:{postgres_server.port}/postgres?connect_timeout=3"
    with pytest.raises(errors.BackendUnavailable, match="nosuchrole") as caught:
        coordactors.connect(url, "a")
    assert SECRET not in str(caught.value) and SECRET not in repr(caught.value)
    assert SECRET not in caplog.text


def test_a_database_that_does_not_exist_is_a_clear_error(postgres_server):
    url = f"postgresql://postgres:{SECRET}@{postgres_server.host}:{postgres_server.port}/nosuchdb?connect_timeout=3"
    with pytest.raises(errors.BackendUnavailable, match='database "nosuchdb" does not exist') as caught:
        coordactors.connect(url, "a")
    assert SECRET not in str(caught.value) and SECRET not in repr(caught.value)


def test_a_password_in_the_url_shows_nowhere(coordinators, postgres_server, namespace, caplog):
    caplog.set_level(logging.DEBUG)
    url = f"postgresql://postgres:{SECRET}@{postgres_server.host}:{postgres_server.port}/postgres?namespace={namespace}"
    coord = coordinators("a", url)
    coord.join("g", create=True)
    with pytest.raises(errors.MemberAlreadyJoined) as caught:
        coord.join("g")
    assert SECRET not in repr(coord) and SECRET not in str(caught.value) and SECRET not in repr(caught.value)
    assert SECRET not in caplog.text


def test_an_unreachable_server_is_a_clear_backend_unavailable():
    with pytest.raises(errors.BackendUnavailable, match="127.0.0.1:1"):
        coordactors.connect("postgresql://127.0.0.1:1/postgres?connect_timeout=2", "a")


def test_a_table_in_a_foreign_format_is_refused_and_left_untouched(postgres_server, raw):
    prefix = f"f{uuid.uuid4().hex[:8]}_"
    with raw.cursor() as cur:
        cur.execute(f"CREATE TABLE {prefix}members (id serial PRIMARY KEY, who text)")
        cur.execute(f"INSERT INTO {prefix}members (who) VALUES ('somebody else')")
    try:
        with pytest.raises(errors.InvalidArgument, match=f"{prefix}members") as caught:
            coordactors.connect(f"{postgres_server.url}?table_prefix={prefix}", "a")
        assert "untouched" in str(caught.value)
        assert _all(raw, f"SELECT id, who FROM {prefix}members") == [(1, "somebody else")]
        # Nothing else was created either.
        assert _one(raw, "SELECT count(*) FROM information_schema.tables WHERE table_name LIKE %s", (prefix + "%",)) == (1,)
    finally:
        with raw.cursor() as cur:
            cur.execute(f"DROP TABLE {prefix}members")


def test_names_with_quotes_slashes_and_unicode_are_stored_as_given(coordinators, url):
    coord = coordinators("o'brien; DROP TABLE x --", url)
    group = "../g/ \"quoted\" 'single' ünïcødé ✓"
    coord.join(group, {"k": "v"}, create=True)
    assert coord.members(group) == {"o'brien; DROP TABLE x --"}
    lease = coord.ask(Acquire(group), block=True, timeout=10)
    coord.ask(Release(lease), block=True, timeout=10)


# -- the mechanism ---------------------------------------------------------------------


def test_a_lock_is_an_advisory_lock_on_the_sessions_connection(coordinators, url, namespace, raw):
    coord = coordinators("a", url)
    lease = coord.ask(Acquire("jobs"), block=True, timeout=10)
    key = lock_key(namespace, "jobs")
    holder = _one(raw, "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1 AND granted "
                       "AND classid = ((%s::bigint >> 32) & 4294967295)::oid AND objid = (%s::bigint & 4294967295)::oid",
                  (key, key))
    assert holder == (_pid_of(raw, "a"),)
    assert _one(raw, "SELECT pg_try_advisory_lock(%s)", (key,)) == (False,)
    coord.ask(Release(lease), block=True, timeout=10)
    assert _one(raw, "SELECT pg_try_advisory_lock(%s), pg_advisory_unlock(%s)", (key, key)) == (True, True)


def test_fences_keep_rising_after_the_lock_table_is_emptied(coordinators, url, namespace, raw):
    coord = coordinators("a", url)
    first = coord.ask(Acquire("jobs"), block=True, timeout=10)
    coord.ask(Release(first), block=True, timeout=10)
    second = coord.ask(Acquire("jobs"), block=True, timeout=10)
    assert second.fence == first.fence + 1
    coord.ask(Release(second), block=True, timeout=10)
    with raw.cursor() as cur:
        cur.execute("DELETE FROM coordactors_locks WHERE namespace = %s", (namespace,))  # as if the data were lost
    third = coord.ask(Acquire("jobs"), block=True, timeout=10)
    assert third.fence > second.fence


def test_a_release_wakes_a_waiter_at_once_through_notify(coordinators, url):
    # Heartbeats every 10 s: only the NOTIFY of the release can wake the waiter in time.
    slow = url + "&session_ttl=60&heartbeat_interval=10"
    first, second = coordinators("first", slow), coordinators("second", slow)
    lease = first.ask(Acquire("jobs"), block=True, timeout=10)
    waiting = second.submit(Acquire("jobs", timeout=30))
    wait_until(lambda: second.statistics()["waiting"] == 1)
    released_at = time.monotonic()
    first.ask(Release(lease), block=True, timeout=10)
    granted = waiting.result(timeout=5)
    assert time.monotonic() - released_at < 2
    assert granted.fence > lease.fence


def test_a_waiting_acquire_does_not_stall_the_session(coordinators, url):
    first, second = coordinators("first", url), coordinators("second", url)
    first.ask(Acquire("jobs"), block=True, timeout=10)
    waiting = second.submit(Acquire("jobs", timeout=30))
    second.join("g", create=True)  # served while the acquire waits
    assert second.members("g") == {"second"}
    assert not waiting.done()


def test_a_terminated_connection_loses_the_lease_and_the_session_is_restored(coordinators, url, raw):
    holder, other = coordinators("holder", url), coordinators("other", url)
    own = EventRecorder()
    holder.subscribe(own)
    holder.join("g", {"v": 1}, create=True)
    lease = holder.ask(Acquire("jobs"), block=True, timeout=10)
    with raw.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s", ("coordactors[holder]",))
    own.wait_for(lambda events: any(isinstance(e, LockLost) and e.name == "jobs" for e in events), timeout=10)
    assert lease.lost.is_set()
    own.wait_for(lambda events: any(isinstance(e, SessionRestored) for e in events), timeout=20)
    assert type(own.events[0]) is SessionLost
    # The server freed the advisory lock with the connection.
    taken = other.ask(Acquire("jobs"), block=True, timeout=10)
    assert taken.fence > lease.fence
    assert other.members("g") == {"holder"} and other.capabilities("g", "holder") == {"v": 1}


def test_event_notes_are_used_only_when_they_follow_on_without_a_gap():
    note = "e11 " + events_note([["g", "g"], ["join", "leave"], ["a", "a"]])
    assert events_in_notes([note], 10) == [(11, "g", "join", "a"), (12, "g", "leave", "a")]
    assert events_in_notes([note], 11) == [(12, "g", "leave", "a")]  # seen already: skipped
    assert events_in_notes([note], 12) == []
    assert events_in_notes([note], 9) is None  # event 10 is in no note: read the log
    assert events_in_notes(["e", note], 10) is None  # a bare note: read the log
    assert events_in_notes(["e11 {not json"], 10) is None
    assert events_in_notes(["e11 [1]"], 10) is None and events_in_notes(["ex [[],[],[]]"], 10) is None


def test_events_too_long_for_a_note_send_a_bare_one():
    assert events_note([["g"], ["join"], ["m" * 200]]) != ""
    assert events_note([["g"] * 40, ["join"] * 40, ["m" * 200] * 40]) == ""  # 8,000+ bytes


@pytest.mark.parametrize("carried", [True, False], ids=["events-in-notes", "bare-notes"])
def test_every_change_is_logged_in_the_same_transaction_and_arrives_in_order(coordinators, url, namespace, raw, monkeypatch, carried):
    if not carried:
        monkeypatch.setattr(pg, "NOTE_EVENTS_MAX", 0)
    taken = []

    def spy(payloads, after):
        rows = events_in_notes(payloads, after)
        taken.append(rows)
        return rows

    monkeypatch.setattr(pg, "events_in_notes", spy)
    watcher, worker = coordinators("watcher", url), coordinators("worker", url)
    worker.create_group("g")
    seen = EventRecorder()
    watcher.watch("g", seen)
    for _ in range(20):
        worker.join("g")
        worker.leave("g")
    expected = [MemberJoined("g", "worker"), MemberLeft("g", "worker")] * 20
    seen.wait_for(lambda events: len([e for e in events if isinstance(e, (MemberJoined, MemberLeft))]) >= 40, timeout=10)
    assert [e for e in seen.events if isinstance(e, (MemberJoined, MemberLeft))] == expected
    kinds = _all(raw, "SELECT kind FROM coordactors_events WHERE namespace = %s AND grp = 'g' ORDER BY seq", (namespace,))
    assert [k for (k,) in kinds] == ["join", "leave"] * 20
    seqs = [s for (s,) in _all(raw, "SELECT seq FROM coordactors_events WHERE namespace = %s ORDER BY seq", (namespace,))]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # no gaps
    if carried:
        assert any(taken), "no event was taken from a note"
    else:
        assert taken and not any(rows is not None for rows in taken), "a bare note was taken for events"


def test_concurrent_writers_number_events_in_commit_order(coordinators, url, namespace, raw):
    members = [coordinators(f"m{i}", url) for i in range(4)]
    members[0].create_group("g")
    watcher, seen = coordinators("watcher", url), EventRecorder()
    watcher.watch("g", seen)

    def churn(coord):
        for _ in range(10):
            coord.join("g")
            coord.leave("g")

    threads = [threading.Thread(target=churn, args=(m,)) for m in members]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    seen.wait_for(lambda events: len(events) >= 80, timeout=10)
    logged = _all(raw, "SELECT kind, member FROM coordactors_events WHERE namespace = %s ORDER BY seq", (namespace,))
    assert [(type(e).__name__, e.member) for e in seen.events] == [
        ("MemberJoined" if k == "join" else "MemberLeft", m) for k, m in logged
    ]


def test_an_expired_member_is_reaped_with_its_leave_event_and_restores_itself(coordinators, url, namespace, raw):
    worker = coordinators("worker", url + "&session_ttl=3&heartbeat_interval=0.2&backoff_initial=0.05")
    watcher = coordinators("watcher", url + "&session_ttl=3&heartbeat_interval=0.2")
    seen, own = EventRecorder(), EventRecorder()
    worker.join("g", {"v": 1}, create=True)
    watcher.watch("g", seen)
    worker.subscribe(own)
    with raw.cursor() as cur:  # as if its heartbeats had stopped for longer than session_ttl
        cur.execute("UPDATE coordactors_members SET expires = now() - interval '1 second' WHERE namespace = %s", (namespace,))
    seen.wait_for_event(MemberLeft("g", "worker"))
    own.wait_for(lambda events: [type(e) for e in events][:1] == [SessionLost] and any(isinstance(e, SessionRestored) for e in events))
    wait_until(lambda: watcher.members("g") == {"worker"})
    assert watcher.capabilities("g", "worker") == {"v": 1}


def test_a_statement_that_hangs_fails_the_session_after_query_timeout(coordinators, url, raw):
    coord = coordinators("a", url + "&query_timeout=0.5&backoff_initial=0.05")
    own = EventRecorder()
    coord.subscribe(own)
    coord.create_group("g")
    blocker = psycopg2.connect(dsn=raw.dsn)
    try:
        with blocker.cursor() as cur:
            cur.execute("LOCK TABLE coordactors_groups IN ACCESS EXCLUSIVE MODE")  # held until rollback
        started = time.monotonic()
        with pytest.raises(errors.BackendUnavailable):
            coord.ask(coordactors.messages.CreateGroup("h"), block=True, timeout=10)
        assert time.monotonic() - started < 5
        own.wait_for(lambda events: any(isinstance(e, SessionLost) for e in events), timeout=10)
    finally:
        blocker.rollback()
        blocker.close()
    own.wait_for(lambda events: any(isinstance(e, SessionRestored) for e in events), timeout=20)
    assert "g" in coord.groups()


def test_connect_stop_cycles_leave_no_thread_or_fd(url):
    threads_before = set(threading.enumerate())
    fds_before = len(os.listdir("/proc/self/fd"))
    for i in range(30):
        coord = coordactors.connect(url, f"m{i}")
        try:
            coord.join("g", create=True)
            lease = coord.ask(Acquire("l", timeout=10), block=True, timeout=10)
            coord.ask(Release(lease), block=True, timeout=10)
        finally:
            coord.stop()
    wait_until(lambda: set(threading.enumerate()) <= threads_before,
               message=lambda: str(sorted(t.name for t in set(threading.enumerate()) - threads_before)))
    wait_until(lambda: len(os.listdir("/proc/self/fd")) <= fds_before)


def test_a_watcher_that_reconnects_replays_what_it_missed_from_the_log(coordinators, url, raw):
    watcher = coordinators("watcher", url + "&backoff_initial=0.5&backoff_max=0.5")
    worker = coordinators("worker", url)
    worker.create_group("g")
    seen = EventRecorder()
    watcher.watch("g", seen)
    watcher.subscribe(seen)
    with raw.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s", ("coordactors[watcher]",))
    seen.wait_for(lambda events: any(isinstance(e, SessionLost) for e in events), timeout=10)
    worker.join("g")  # while the watcher is down (it waits 0.5 s before reconnecting)
    worker.leave("g")
    seen.wait_for(lambda events: any(isinstance(e, SessionRestored) for e in events), timeout=20)
    seen.wait_for(lambda events: len([e for e in events if isinstance(e, (MemberJoined, MemberLeft))]) >= 2, timeout=10)
    assert [e for e in seen.events if isinstance(e, (MemberJoined, MemberLeft))] == [MemberJoined("g", "worker"), MemberLeft("g", "worker")]
    # Replayed while the session was restored, before it said so.
    assert [type(e) for e in seen.events] == [SessionLost, MemberJoined, MemberLeft, SessionRestored]


def test_a_lock_freed_by_a_dead_connection_reaches_its_waiter_within_retry_interval(coordinators, url, raw):
    # No NOTIFY when a connection dies, and heartbeats only every 10 s: the retry does it.
    slow = url + "&session_ttl=60&heartbeat_interval=10&retry_interval=0.2&backoff_initial=5&backoff_max=5"
    holder, waiter = coordinators("holder", slow), coordinators("waiter", slow)
    lease = holder.ask(Acquire("jobs"), block=True, timeout=10)
    waiting = waiter.submit(Acquire("jobs", timeout=30))
    wait_until(lambda: waiter.statistics()["waiting"] == 1)
    killed_at = time.monotonic()
    with raw.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s", ("coordactors[holder]",))
    granted = waiting.result(timeout=10)
    assert time.monotonic() - killed_at < 3
    assert granted.fence > lease.fence


def test_characteristics_say_locks_end_with_the_connection(coordinators, url):
    from coordactors.characteristics import Characteristics as C

    assert C.NON_TIMEOUT_BASED in coordinators("a", url).characteristics


def test_a_wrong_password_is_refused_without_showing_it():
    """On a private server that asks TCP clients for a scram password."""
    import psycopg2

    import coordactors
    from coordactors.testing.servers import PostgresServer, ServerUnavailable

    try:
        server = PostgresServer().start()
    except ServerUnavailable as exc:  # pragma: no cover - the fixture rows fail loudly in CI already
        pytest.skip(str(exc))
    try:
        admin = psycopg2.connect(host=server.host, port=server.port, user="postgres", dbname="postgres")
        admin.autocommit = True
        with admin.cursor() as cursor:
            cursor.execute("SET password_encryption = 'scram-sha-256'")
            cursor.execute("CREATE ROLE alice LOGIN PASSWORD 'RightPassword1'")
            cursor.execute("GRANT ALL ON SCHEMA public TO alice")  # PostgreSQL 15 grants no CREATE by default
            # Ask for a password over TCP from now on (the harness uses trust).
            with open(f"{server.directory}/data/pg_hba.conf", "w") as hba:
                hba.write("local all all trust\nhost all postgres 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\n")
            cursor.execute("SELECT pg_reload_conf()")
        admin.close()
        url = f"postgresql://alice:Sup3rSecretPw@{server.host}:{server.port}/postgres?connect_timeout=5"
        with pytest.raises(errors.BackendUnavailable) as caught:
            coordactors.connect(url, "a")
        shown = f"{caught.value} {caught.value!r} {caught.value.backend}"
        assert "Sup3rSecretPw" not in shown
        assert "alice" in str(caught.value)
        with coordactors.connect(url.replace("Sup3rSecretPw", "RightPassword1"), "a") as coord:
            coord.join("g", create=True)
            assert coord.members("g") == {"a"}
    finally:
        server.stop()


def test_a_resting_reader_wakes_for_a_waiter_and_for_a_watch(coordinators, url, monkeypatch):
    from coordactors.backend_actors import postgresql

    real_select = postgresql.select.select

    # Hold the waiter's reader in its select until the lock was freed behind
    # its back: only its catch-up on waking (every waiter retried) can then
    # grant the lock -- retry_interval=60 and heartbeat_interval=30 rule out
    # the periodic retries.
    gate, held = threading.Event(), threading.Event()
    gate.set()

    def gated_select(rlist, wlist, xlist, timeout=None):
        if threading.current_thread().name == "PostgreSQLEvents[waiter]" and not gate.is_set():
            held.set()
            assert gate.wait(30)
        return real_select(rlist, wlist, xlist, timeout)

    monkeypatch.setattr(postgresql.select, "select", gated_select)
    slow_retry = url + "&retry_interval=60&session_ttl=90&heartbeat_interval=30"
    holder, waiter, watcher = (coordinators(name, slow_retry) for name in ("holder", "waiter", "watcher"))
    sessions = {name: coord._route.session._actor_weakref() for name, coord in (("waiter", waiter), ("watcher", watcher))}
    # Nothing watched, nothing waited for: their readers rest (do not listen).
    wait_until(lambda: all(session.conn is not None and session.conn.rest.resting for session in sessions.values()), timeout=10)
    lease = holder.ask(Acquire("jobs"), block=True, timeout=10)
    gate.clear()
    sessions["waiter"].conn.poke()
    assert held.wait(10)  # the waiter's reader is held, resting (not listening)
    waiting = waiter.submit(Acquire("jobs", timeout=30))
    wait_until(lambda: sessions["waiter"]._waiters, timeout=10)
    holder.ask(Release(lease), block=True, timeout=10)  # its NOTIFY reaches nobody listening
    gate.set()
    assert waiting.result(timeout=10).fence > lease.fence
    wait_until(lambda: sessions["waiter"].conn.rest.resting, timeout=10)  # nothing waits any more

    check_a_watch_wakes_a_resting_reader(holder, watcher, sessions["watcher"])


def test_a_batch_of_releases_tells_apart_the_lease_lost_behind_its_back(coordinators, url, namespace, raw):
    coord = coordinators("holder", url)
    own = EventRecorder()
    coord.subscribe(own)
    kept, tampered = (coord.ask(Acquire(name), block=True, timeout=10) for name in ("kept", "tampered"))
    with raw.cursor() as cur:  # someone else's hand on the row: the grant is no longer this session's
        cur.execute("UPDATE coordactors_locks SET token = 'someone else' WHERE namespace = %s AND name = 'tampered'", (namespace,))
    busy = BusySession(coord._route.session._actor_weakref())
    releases = [coord.submit(Release(lease)) for lease in (kept, tampered)]
    busy.release()
    assert releases[0].result(timeout=10) is None
    with pytest.raises(errors.LockNotHeld, match="had already been lost"):
        releases[1].result(timeout=10)
    own.wait_for(lambda events: any(isinstance(e, LockLost) and e.name == "tampered" for e in events), timeout=10)
    assert not any(isinstance(e, LockLost) and e.name == "kept" for e in own.events)
