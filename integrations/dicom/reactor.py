"""Event-driven waits for pynetdicom's two reactor loops, so each DIMSE exchange costs no polling.

pynetdicom 3.0 polls. An association's DUL thread checks its socket (and its queue of PDUs to
send) and, finding nothing, sleeps 1 ms; its association thread sleeps 1 ms at the top of every
loop before it looks for a received DIMSE message. A C-STORE of a 512x512 CT slice arrives in
about 32 PDUs; whenever the receiver has drained the socket before the sender's next PDU is in,
the DUL thread sleeps another millisecond, and the response waits up to a millisecond to be
picked up by each thread. Measured on the ingest path: 4.2 ms of the ~8.4 ms per instance went
between two C-STORE handler calls, against 1 ms for DCMTK's storescp.

`install()` makes the 1 ms sleeps of the two reactor loops (and only those: pynetdicom's other
sleeps, e.g. an SCU waiting for a response, stay as they are) wait for what they poll for,
for associations that `attach(assoc)` prepared:

- the DUL thread blocks in select() on its socket and a wake-up pipe, which `send_pdu` and
  `kill_dul` write to: incoming data and outgoing primitives are handled at once;
- the association thread waits on its DIMSE message queue's condition, woken by the DUL thread
  putting a complete message there, or a primitive for the association itself (the peer's
  A-RELEASE-RQ or an abort, which its loop checks for: without the wake-up the release answer
  waited up to `_CEILING` for the loop's next turn, 5 ms at the end of every association).

Both still wake at least every `_CEILING` seconds, so everything the loops check besides
(timers, release and abort requests, a dead DUL thread) is seen within that time.
"""

from __future__ import annotations

import contextlib
import os
import select
import ssl
import sys
import threading
import time
from typing import Any

import pynetdicom.association
import pynetdicom.dul

# The reactor loops' own delay (`DULServiceProvider._run_loop_delay`, and the literal in
# `Association._run_reactor`): only sleeps of this length from those two functions are replaced.
_REACTOR_DELAY = 0.001
_CEILING = 0.005


def _wait_dul(dul: Any) -> None:
    """Until the DUL's socket is readable, a primitive is queued to send, or `_CEILING`."""
    wake = getattr(dul, "btt_wake_fd", None)
    transport = dul.socket
    sock = getattr(transport, "socket", None) if transport is not None else None
    if wake is None or sock is None:
        time.sleep(_REACTOR_DELAY)
        return
    if dul.to_provider_queue.qsize() or (isinstance(sock, ssl.SSLSocket) and sock.pending()):
        return  # already something to do (TLS: decrypted bytes select() cannot see)
    try:
        readable, _, _ = select.select([sock, wake], [], [], _CEILING)
    except (OSError, ValueError):  # the socket was closed under us: the loop notices
        time.sleep(_REACTOR_DELAY)
        return
    if wake in readable:
        with contextlib.suppress(OSError):
            os.read(wake, 4096)


def _wait_association(assoc: Any) -> None:
    """Until a complete DIMSE message is queued for the association, or `_CEILING`."""
    messages = assoc.dimse.msg_queue
    with messages.not_empty:
        if not messages._qsize():
            messages.not_empty.wait(_CEILING)


class _ReactorClock:
    """Stands in for the `time` module inside pynetdicom's `dul` and `association` modules."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        if seconds == _REACTOR_DELAY:
            caller = sys._getframe(1).f_code.co_name
            thread = threading.current_thread()
            if caller == "run_reactor" and getattr(thread, "btt_wake_fd", None) is not None:
                _wait_dul(thread)
                return
            if caller == "_run_reactor" and getattr(thread, "btt_event_driven", False):
                _wait_association(thread)
                return
        time.sleep(seconds)


def install() -> None:
    """Route the reactor loops' sleeps through `_ReactorClock` (idempotent, process-wide)."""
    for module in (pynetdicom.dul, pynetdicom.association):
        if not isinstance(module.time, _ReactorClock):
            module.time = _ReactorClock()


def attach(assoc: Any) -> None:
    """Make this association's two reactor loops event-driven (call before its threads start)."""
    dul = assoc.dul
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    os.set_blocking(write_fd, False)

    def wake() -> None:
        with contextlib.suppress(OSError):  # pipe full (already awake) or closed (ended)
            os.write(write_fd, b"\0")

    send_pdu, kill_dul = dul.send_pdu, dul.kill_dul

    def send_pdu_and_wake(primitive: Any) -> None:
        send_pdu(primitive)
        wake()

    def kill_dul_and_wake() -> None:
        kill_dul()
        wake()

    to_user = dul.to_user_queue

    def put_for_user_and_wake(primitive: Any, *args: Any, **kwargs: Any) -> None:
        to_user.__class__.put(to_user, primitive, *args, **kwargs)
        messages = assoc.dimse.msg_queue  # what `_wait_association` waits on now
        with messages.not_empty:
            messages.not_empty.notify_all()

    dul.send_pdu = send_pdu_and_wake
    dul.kill_dul = kill_dul_and_wake
    to_user.put = put_for_user_and_wake
    dul.btt_wake_fd = read_fd
    dul.btt_wake_fds = (read_fd, write_fd)
    assoc.btt_event_driven = True


def detach(assoc: Any) -> None:
    """Close what `attach` opened, once the association's threads have ended."""
    dul = assoc.dul
    fds = getattr(dul, "btt_wake_fds", None)
    if fds is None:
        return
    dul.join(timeout=2 * _CEILING + 1)
    dul.btt_wake_fd = None
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    dul.btt_wake_fds = None
