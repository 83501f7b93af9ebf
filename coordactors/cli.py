"""The ``coordactors`` command line (also ``python -m coordactors``).

Hold a fenced lock around a command, look at groups, members and leaders,
and stream a group's events as JSON lines::

    coordactors lock URL NAME [--timeout S] [--member ID] -- CMD...
    coordactors members URL GROUP [--json]
    coordactors leader URL GROUP
    coordactors groups URL
    coordactors watch URL GROUP [--count N] [--timeout S]
    coordactors check URL [--nemesis ...]      (coordactors.testing.checker)
    coordactors bench [URL...]                 (coordactors.bench)

Exit statuses follow ``sysexits.h`` so that scripts can tell a busy lock
(75: try again later) from a broken setup (64, 69); see :data:`EXIT_STATUSES`.
Expected failures print one line on stderr, never a traceback, and every URL
printed has its password replaced by ``***``.

Only the backend named by the URL is imported (``coordactors.connect`` loads
backends lazily), so a command starts in about 0.2 s.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime
import importlib
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from types import FrameType
from typing import Any, Callable, Iterator, NoReturn, Sequence

import attrs

import coordactors
from coordactors import errors
from coordactors._signals import signals_blocked
from coordactors.events import GROUP_EVENTS, Event, SessionLost, SessionRestored
from coordactors.messages import Acquire, Lease, Release
from coordactors.urls import redact

__all__ = ["EXIT_STATUSES", "main"]

EX_OK = 0
EX_NO_RESULT = 1        # `leader`: the group has no leader
EX_USAGE = 64           # bad arguments, malformed URL or option
EX_NOINPUT = 66         # the group does not exist
EX_UNAVAILABLE = 69     # the backend is unreachable, or its client library is missing
EX_LOCK_LOST = 70       # EX_SOFTWARE: the lock was lost while the command ran
EX_TEMPFAIL = 75        # the lock was not acquired within --timeout; `watch --count` not reached
EX_CANNOT_EXECUTE = 126
EX_COMMAND_NOT_FOUND = 127
STOP_TIMEOUT = 5.0      # seconds `stop()` may take to release and leave at exit
REQUEST_TIMEOUT = 30.0  # seconds a read (members, leader...) may take
SIGNAL_CHECK = 0.25     # seconds between the main thread's looks for a stop signal it missed (see _wait)

EXIT_STATUSES = """\
exit statuses:
  0..255  lock: the command's own status (128+N if a signal N killed it)
  0       success
  1       leader: the group has no leader (nothing printed)
  64      usage error: bad arguments, malformed URL or URL option
  66      the group does not exist
  69      backend unavailable: unreachable, or its client library is missing
  70      lock: the lock was lost while the command ran (the command was stopped)
  75      lock: not acquired within --timeout; watch: fewer than --count events before --timeout
  126/127 lock: the command could not be executed / was not found
  128+N   interrupted by signal N before the command started (130: SIGINT, 143: SIGTERM)
"""

# Signals that end a command; `lock` forwards them to its child instead.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"]+")


def _scrub(text: str) -> str:
    """``text`` with every URL in it redacted: a last guard so no password is printed."""
    return _URL_IN_TEXT.sub(lambda match: redact(match.group()), text)


def _say(command: str, text: str) -> None:
    print(f"coordactors {command}: {_scrub(text)}", file=sys.stderr, flush=True)


class _Signalled(BaseException):
    """Raised in the main thread by a stop signal (like KeyboardInterrupt, for every signal)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_signalled(signum: int, frame: FrameType | None) -> None:
    raise _Signalled(signum)


def _defer(signum: int, frame: FrameType | None) -> None:
    """Ignore a stop signal while releasing: we are already on the way out."""


@contextlib.contextmanager
def _on_signals(handler: Callable[[int, FrameType | None], Any]) -> Iterator[None]:
    """Handle the stop signals with ``handler`` for the block (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


@contextlib.contextmanager
def _connected(url: str, member: str) -> Iterator[coordactors.Coordinator]:
    """A coordinator for the block; stopped (locks released) at the end, signals deferred meanwhile."""
    coord = coordactors.connect(url, member)
    try:
        yield coord
    finally:
        with _on_signals(_defer):
            coord.stop(timeout=STOP_TIMEOUT)


def _default_member() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds (got {text!r})") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be >= 0 and finite (got {text!r})")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number (got {text!r})") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0 (got {text!r})")
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8", "replace")
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return repr(value)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- lock ---------------------------------------------------------------------


def _exit_status_of_child(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


class _Child:
    """The command run under the lock, and the signals forwarded to it.

    A stop signal that arrives before the command has started is remembered
    and delivered as soon as it has, so no command ever runs unsignalled.
    """

    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        self.signalled: int | None = None
        # From a terminal, Ctrl-C already reaches the whole foreground process
        # group, child included: forwarding it too would deliver it twice (and
        # a second Ctrl-C means "force quit" to many programs).
        self._tty_delivers_sigint = _in_foreground_of_terminal()

    def forward(self, signum: int, frame: FrameType | None) -> None:
        """Signal handler (main thread): pass ``signum`` on to the command."""
        self.signalled = signum
        if signum == signal.SIGINT and self._tty_delivers_sigint:
            return
        self._send(signum)

    def _send(self, signum: int) -> None:
        process = self.process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signum)

    def started(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        if self.signalled is not None:
            self._send(self.signalled)

    def stop(self, kill_after: float) -> None:
        """SIGTERM the command, then SIGKILL it if it is still running after ``kill_after`` seconds."""
        process = self.process
        assert process is not None
        self._send(signal.SIGTERM)
        try:
            process.wait(kill_after)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait()


def _in_foreground_of_terminal() -> bool:
    try:
        return os.tcgetpgrp(sys.stdin.fileno()) == os.getpgrp()
    except (OSError, ValueError, AttributeError):
        return False


def _lost_cause(lease: Lease) -> str:
    try:
        lease.check()
    except errors.LockLost as exc:
        return str(exc)
    return f"lock {lease.name!r} (fence {lease.fence}) was lost"


def _cmd_lock(args: argparse.Namespace) -> int:
    member = args.member or _default_member()
    with _connected(args.url, member) as coord:
        lease = _acquire(args, coord)
        if args.verbose:
            _say("lock", f"acquired {lease.name!r} with fence {lease.fence} as {coord.member_id!r}")
        status = _run_holding(args, coord, lease)
    if args.verbose and status != EX_LOCK_LOST:
        _say("lock", f"released {lease.name!r}")
    return status


def _acquire(args: argparse.Namespace, coord: coordactors.Coordinator) -> Lease:
    """The lease on ``args.name``; LockTimeout if not granted within ``args.timeout``."""
    started = time.monotonic()
    timeout = args.timeout
    if args.verbose and timeout != 0:
        # Try once first, so that we can say that we are waiting.
        try:
            return _ask_acquire(coord, Acquire(args.name, 0))
        except errors.LockTimeout:
            _say("lock", f"waiting for {args.name!r}: another member holds it")
        if timeout is not None:
            timeout = max(0.0, timeout - (time.monotonic() - started))
    return _ask_acquire(coord, Acquire(args.name, timeout))


def _wait(done: Callable[[float], bool]) -> None:
    """Main thread: wait until ``done(seconds)`` says so, in slices.

    CPython runs a signal handler between bytecodes.  A signal that lands
    just before the main thread blocks in a lock wait is noted but handled
    only when the wait ends: waiting without a timeout, ``coordactors lock``
    sat through a SIGTERM until the lock came (1 in 15 under load here).
    Each slice's end runs what was missed."""
    while not done(SIGNAL_CHECK):
        pass


def _ask_acquire(coord: coordactors.Coordinator, request: Acquire) -> Lease:
    future = coord.submit(request)
    try:
        _wait(lambda seconds: bool(concurrent.futures.wait([future], seconds).done))
    except _Signalled:
        future.cancel()  # a grant that arrives now is released by the session
        raise
    return future.result()  # type: ignore[no-any-return]


def _run_holding(args: argparse.Namespace, coord: coordactors.Coordinator, lease: Lease) -> int:
    """Run the command while ``lease`` is held; return our exit status."""
    env = dict(os.environ, COORDACTORS_FENCE=str(lease.fence), COORDACTORS_LOCK=lease.name, COORDACTORS_MEMBER=coord.member_id)
    child = _Child()
    wake = threading.Event()
    with _on_signals(child.forward):
        try:
            process = subprocess.Popen(args.command, env=env)
        except FileNotFoundError:
            _say("lock", f"{args.command[0]}: command not found")
            return EX_COMMAND_NOT_FOUND
        except OSError as exc:
            _say("lock", f"{args.command[0]}: cannot execute: {exc.strerror or exc}")
            return EX_CANNOT_EXECUTE
        child.started(process)
        # Two waiters wake the main thread, which stays free to run signal
        # handlers: the command's exit, and the loss of the lease (``lost`` is
        # set, and a LockLost event emitted, when the backend no longer
        # guarantees it).  The second is left waiting if the lease is never
        # lost; releasing the lease sets ``lost`` and ends it.
        with signals_blocked():  # the main thread takes every signal (see coordactors._signals)
            threading.Thread(target=lambda: (process.wait(), wake.set()), name="coordactors-lock-child", daemon=True).start()
            threading.Thread(target=lambda: (lease.lost.wait(), wake.set()), name="coordactors-lock-lease", daemon=True).start()
        _wait(wake.wait)
        if process.returncode is None:
            _say("lock", f"{_lost_cause(lease)}; the command was still running: stopping it (pid {process.pid})")
            child.stop(args.kill_after)
            return EX_LOCK_LOST
        status = _exit_status_of_child(process.returncode)
        if not lease.held:
            _say("lock", f"{_lost_cause(lease)}; it was lost before the command finished (its status was {status})")
            return EX_LOCK_LOST
        try:
            coord.ask(Release(lease), block=True, timeout=REQUEST_TIMEOUT)
        except errors.LockNotHeld as exc:
            _say("lock", f"lock {lease.name!r} (fence {lease.fence}) was lost before the command finished: {exc}")
            return EX_LOCK_LOST
        return status


# -- reads ------------------------------------------------------------------------


def _cmd_members(args: argparse.Namespace) -> int:
    with _connected(args.url, args.member or _default_member()) as coord:
        members = sorted(coord.members(args.group, timeout=REQUEST_TIMEOUT))
        if not args.json:
            for member in members:
                print(member)
            return EX_OK
        capabilities: dict[str, Any] = {}
        for member in members:
            try:
                capabilities[member] = coord.capabilities(args.group, member, timeout=REQUEST_TIMEOUT)
            except errors.MemberNotJoined:
                continue  # it left while we were listing
        print(json.dumps(capabilities, sort_keys=True, default=_json_default))
        return EX_OK


def _cmd_leader(args: argparse.Namespace) -> int:
    with _connected(args.url, args.member or _default_member()) as coord:
        leader = coord.leader(args.group, timeout=REQUEST_TIMEOUT)
    if leader is None:
        return EX_NO_RESULT
    print(leader)
    return EX_OK


def _cmd_groups(args: argparse.Namespace) -> int:
    with _connected(args.url, args.member or _default_member()) as coord:
        for group in sorted(coord.groups(timeout=REQUEST_TIMEOUT)):
            print(group)
    return EX_OK


def _event_json(event: Event) -> str:
    fields: dict[str, Any] = {"event": type(event).__name__}
    fields.update(attrs.asdict(event, recurse=False))  # type: ignore[arg-type]
    fields["time"] = _now()
    return json.dumps(fields, default=_json_default)


def _cmd_watch(args: argparse.Namespace) -> int:
    inbox: queue.Queue[Event] = queue.Queue()

    def session_event(event: Event) -> None:
        if isinstance(event, SessionLost):
            _say("watch", f"session lost ({event.cause}); reconnecting, events may be missed meanwhile")
        elif isinstance(event, SessionRestored):
            _say("watch", f"session restored after {event.downtime:.1f}s")

    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    seen = 0
    try:
        with _connected(args.url, args.member or _default_member()) as coord:
            coord.subscribe(session_event, {SessionLost, SessionRestored}, timeout=REQUEST_TIMEOUT)
            coord.watch(args.group, inbox.put, GROUP_EVENTS, timeout=REQUEST_TIMEOUT)
            _say("watch", f"watching group {args.group!r} on {coord.url}")
            while args.count is None or seen < args.count:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return EX_OK if args.count is None else EX_TEMPFAIL
                try:  # in slices, as _wait does
                    event = inbox.get(timeout=SIGNAL_CHECK if remaining is None else min(remaining, SIGNAL_CHECK))
                except queue.Empty:
                    continue
                sys.stdout.write(_event_json(event) + "\n")
                sys.stdout.flush()
                seen += 1
    except _Signalled:
        return EX_OK  # interrupting a watch is how it normally ends
    return EX_OK


# -- commands of their own ------------------------------------------------------------

DELEGATED = {
    "check": ("coordactors.testing.checker", "check a backend's locks under faults, as Jepsen does (its own --help)"),
    "bench": ("coordactors.bench", "benchmark against the raw clients and tooz (its own --help)"),
}
"""Commands with a parser of their own: everything after the name goes to their ``main(argv)``."""


def _delegate(name: str, argv: list[str]) -> int:
    try:
        module = importlib.import_module(DELEGATED[name][0])
    except ImportError as exc:  # an extra's library is missing (e.g. pip install coordactors[bench])
        _say(name, f"cannot run: {exc}")
        return EX_UNAVAILABLE
    return int(module.main(argv))


# -- parser -----------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse, exiting 64 (EX_USAGE) on bad usage and never echoing a password."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EX_USAGE, f"{self.prog}: error: {_scrub(message)}\n")


def _add_common(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("url", metavar="URL", help="backend URL, e.g. redis://host:6379, file:///var/lib/app/coord")
    parser.add_argument("--member", metavar="ID", help=f"member id {what} (default: <hostname>-<pid>)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``coordactors`` command."""
    formatter = argparse.RawDescriptionHelpFormatter
    parser = _Parser(
        prog="coordactors",
        description="Distributed coordination from the shell: fenced locks, groups, leaders, events.",
        epilog=EXIT_STATUSES, formatter_class=formatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {coordactors.__version__}")
    commands = parser.add_subparsers(dest="command_name", metavar="COMMAND", required=True)

    lock = commands.add_parser(
        "lock", help="run a command while holding a fenced lock",
        usage="coordactors lock [-h] [-v] [--timeout S] [--member ID] [--kill-after S] URL NAME -- CMD [ARG...]",
        description=(
            "Acquire lock NAME, run CMD while holding it, release it when CMD exits.\n\n"
            "CMD gets COORDACTORS_FENCE (the lease's fence: strictly increasing per lock\n"
            "name; hand it to whatever the lock protects), COORDACTORS_LOCK and\n"
            "COORDACTORS_MEMBER in its environment.  SIGINT, SIGTERM and SIGHUP are\n"
            "forwarded to CMD; the lock is released however we exit.  If the lock is lost\n"
            "while CMD runs, CMD gets SIGTERM (SIGKILL after --kill-after) and we exit 70."
        ),
        epilog=EXIT_STATUSES, formatter_class=formatter,
    )
    _add_common(lock, "holding the lock")
    lock.add_argument("name", metavar="NAME", help="the lock's name")
    lock.add_argument("command", metavar="CMD", nargs="*", help="the command to run, after '--'")
    lock.add_argument("--timeout", type=_seconds, metavar="S",
                      help="give up (exit 75) if not acquired within S seconds; 0: try once (default: wait)")
    lock.add_argument("--kill-after", type=_seconds, default=10.0, metavar="S",
                      help="if the lock is lost, SIGKILL the command S seconds after SIGTERM (default: 10)")
    lock.add_argument("-v", "--verbose", action="store_true",
                      help="say on stderr when waiting for the lock, when it is acquired (with its fence) and released")
    lock.set_defaults(run=_cmd_lock, parser=lock)

    members = commands.add_parser(
        "members", help="list a group's members", description="Print the members of GROUP, one per line.",
        epilog=EXIT_STATUSES, formatter_class=formatter,
    )
    _add_common(members, "to connect as")
    members.add_argument("group", metavar="GROUP")
    members.add_argument("--json", action="store_true", help='print one JSON object: {"member": capabilities, ...}')
    members.set_defaults(run=_cmd_members)

    leader = commands.add_parser(
        "leader", help="print a group's leader",
        description="Print the leader of GROUP; print nothing and exit 1 if it has none.",
        epilog=EXIT_STATUSES, formatter_class=formatter,
    )
    _add_common(leader, "to connect as")
    leader.add_argument("group", metavar="GROUP")
    leader.set_defaults(run=_cmd_leader)

    groups = commands.add_parser(
        "groups", help="list the groups", description="Print every group, one per line.",
        epilog=EXIT_STATUSES, formatter_class=formatter,
    )
    _add_common(groups, "to connect as")
    groups.set_defaults(run=_cmd_groups)

    watch = commands.add_parser(
        "watch", help="stream a group's events as JSON lines",
        description=(
            "Print GROUP's events (MemberJoined, MemberLeft, LeaderElected) as they are\n"
            "pushed, one JSON object per line, flushed at once:\n\n"
            '  {"event": "MemberJoined", "group": "workers", "member": "w1", "time": "2026-01-02T03:04:05.678Z"}\n\n'
            "time is when the event reached us (UTC).  Runs until SIGINT/SIGTERM (exit 0),\n"
            "--count events, or --timeout.  Session loss and recovery are noted on stderr."
        ),
        epilog=EXIT_STATUSES, formatter_class=formatter,
    )
    _add_common(watch, "to connect as")
    watch.add_argument("group", metavar="GROUP")
    watch.add_argument("--count", type=_count, metavar="N", help="stop after N events")
    watch.add_argument("--timeout", type=_seconds, metavar="S",
                       help="stop after S seconds (exit 0; 75 if --count was given and not reached)")
    watch.set_defaults(run=_cmd_watch)

    for name, (_module, summary) in DELEGATED.items():
        commands.add_parser(name, help=summary, add_help=False)
    return parser


def _split_command(argv: list[str]) -> tuple[list[str], list[str]]:
    """Split ``lock ... -- CMD...`` at its first ``--``: what follows is the command, untouched."""
    name = next((word for word in argv if not word.startswith("-")), None)
    if name != "lock" or "--" not in argv:
        return argv, []
    cut = argv.index("--")
    return argv[:cut], argv[cut + 1:]


def _exit_status(exc: errors.CoordinationError) -> int:
    if isinstance(exc, errors.InvalidArgument):
        return EX_USAGE
    if isinstance(exc, errors.LockTimeout):
        return EX_TEMPFAIL
    if isinstance(exc, errors.GroupNotFound):
        return EX_NOINPUT
    if isinstance(exc, errors.LockLost):
        return EX_LOCK_LOST
    if isinstance(exc, (errors.BackendUnavailable, errors.NotSupported, errors.OperationTimedOut)):
        return EX_UNAVAILABLE
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``coordactors`` command with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    words = list(sys.argv[1:] if argv is None else argv)
    if words and words[0] in DELEGATED:
        return _delegate(words[0], words[1:])
    parser = build_parser()
    words, command = _split_command(words)
    args = parser.parse_args(words)
    if args.command_name == "lock":
        args.command = args.command + command
        if not args.command:
            args.parser.error("give the command to run after '--', e.g. coordactors lock URL NAME -- make deploy")
    try:
        with _on_signals(_raise_signalled):
            return int(args.run(args))
    except _Signalled as stop:
        return 128 + stop.signum
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    except errors.CoordinationError as exc:
        _say(args.command_name, str(exc))
        return _exit_status(exc)
    except BrokenPipeError:
        # The reader went away (`coordactors watch ... | head -1`): stop quietly,
        # and keep the interpreter from complaining when it flushes stdout.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EX_OK


if __name__ == "__main__":
    raise SystemExit(main())
