"""A coordinator in a separate process, driven by JSON lines on stdin.

Run as ``python child_worker.py URL MEMBER``.  Each input line is a command
``{"op": ..., ...}``; each output line is ``{"reply": ...}``, ``{"error":
"<class name>"}`` or, at any time, ``{"event": "<repr>"}`` for this
coordinator's own events and those of watched groups.
"""

from __future__ import annotations

import json
import sys
import threading

import coordactors
from coordactors import errors
from coordactors.messages import Acquire, Release

_out_lock = threading.Lock()


def emit(payload: dict) -> None:
    with _out_lock:
        sys.stdout.write(json.dumps(payload) + "\n")
        sys.stdout.flush()


def main() -> None:
    url, member = sys.argv[1], sys.argv[2]
    coord = coordactors.connect(url, member)
    coord.subscribe(lambda event: emit({"event": repr(event)}))
    leases = {}
    emit({"reply": "ready"})
    for line in sys.stdin:
        command = json.loads(line)
        op = command["op"]
        try:
            if op == "acquire":
                lease = coord.ask(Acquire(command["name"], timeout=command.get("timeout")), block=True, timeout=30)
                leases[lease.name] = lease
                reply = lease.fence
            elif op == "release":
                coord.ask(Release(leases.pop(command["name"])), block=True, timeout=30)
                reply = None
            elif op == "check":
                leases[command["name"]].check()
                reply = "held"
            elif op == "join":
                coord.join(command["group"], command.get("capabilities"), create=True)
                reply = None
            elif op == "leave":
                coord.leave(command["group"])
                reply = None
            elif op == "campaign":
                coord.campaign(command["group"])
                reply = None
            elif op == "leader":
                reply = coord.leader(command["group"])
            elif op == "hold_ipc_mutex":
                from coordactors.backend_actors.ipc import IpcStorage

                storage = IpcStorage(command["name"], 4 << 20, 0.2)
                storage._lock()  # taken and never given back: the process is about to be killed
                reply = "locked"
            elif op == "stop":
                coord.stop()
                emit({"reply": None})
                return
            else:
                raise ValueError(op)
        except errors.CoordinationError as exc:
            emit({"error": type(exc).__name__, "text": str(exc)})
            continue
        emit({"reply": reply})


if __name__ == "__main__":
    main()
