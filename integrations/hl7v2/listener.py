"""The MLLP listener: a thread per connection, and the database work of each message done in that
thread on a session lent for it.

`MllpListener(...).run(stop_event)` serves `BTT_MLLP_PORT` (and `BTT_MLLP_TLS_PORT` with TLS when a
certificate is configured) until `stop_event` is set; `manage.py mllp_listener` (the `mllp` child
of `serve`) runs it.

- The thread calling `run` accepts connections; each connection gets a thread of its own, which
  reads its frames (`mllp.FrameReader`), hands each message to `services.receive_message` on a
  database session lent to it (`btt_health.db_sessions.DatabaseSessions`: at most `BTT_MLLP_WORKERS`, a
  connection keeping to the same one while it is free) and writes the ACK once the message is
  committed. Messages on one connection are handled in order, one at a time (MLLP senders wait
  for each ACK); connections do not wait for each other, except for a free session when more of
  them are busy than there are sessions. Nothing hands a message from thread to thread (the
  asyncio listener with a worker pool that this replaced woke two threads per message; side by
  side on one connection this one took ~2% more messages per second, docs/roadmap.md).
- TLS: the handshake runs in the connection's thread, within `BTT_MLLP_TIMEOUT`.
- Limits: `BTT_MLLP_MAX_CONNECTIONS` (more are closed at once), `BTT_MLLP_MAX_MESSAGE_BYTES` (an
  AR after the message's end block, the connection goes on), `BTT_MLLP_TIMEOUT` (a peer silent in
  the middle of a message, or a TLS handshake, is disconnected; nothing of that message is kept),
  `BTT_MLLP_IDLE_TIMEOUT` between messages. Broken framing closes the connection.
- Stopping: no new connections; each connection's reading side is shut, so connections waiting
  for a message end at once, and a message being processed is finished and answered first (up
  to `stop_timeout`); then every connection is closed.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable

from django.conf import settings

from btt_health.db_sessions import DatabaseSessions
from integrations.hl7v2 import mllp, overlap, services, tls

logger = logging.getLogger(__name__)

_ACCEPT_POLL_SECONDS = 0.2  # how often the accepting thread looks at the stop event


class MllpListener:
    def __init__(
        self,
        *,
        host: str | None = None,
        port: int | None = None,
        tls_port: int | None = None,
        say: Callable[[str], None] | None = None,
    ) -> None:
        self.host = host or settings.BTT_MLLP_HOST
        self.port = port if port is not None else settings.BTT_MLLP_PORT
        self.tls_context: ssl.SSLContext | None = tls.server_context()
        self.tls_port = tls_port if tls_port is not None else settings.BTT_MLLP_TLS_PORT
        self.max_bytes = settings.BTT_MLLP_MAX_MESSAGE_BYTES
        self.timeout = settings.BTT_MLLP_TIMEOUT
        self.idle_timeout = settings.BTT_MLLP_IDLE_TIMEOUT
        self.max_connections = settings.BTT_MLLP_MAX_CONNECTIONS
        self.say = say or (lambda message: logger.info(message))
        self.sessions = DatabaseSessions(settings.BTT_MLLP_WORKERS)
        self._lock = threading.Lock()
        self._connections: dict[threading.Thread, socket.socket] = {}

    def run(self, stop: threading.Event, *, stop_timeout: float = 10.0) -> None:
        """Serve until `stop` is set (blocking). OSError when a port cannot be bound. Installs
        `overlap` for the whole process (the listener runs in a process of its own)."""
        overlap.install()
        listening = [(_listen(self.host, self.port), False)]
        try:
            self.say(f"listening: MLLP on {_bind(self.host, self.port)}")
            if self.tls_context is not None:
                listening.append((_listen(self.host, self.tls_port), True))
                self.say(f"listening: MLLP over TLS on {_bind(self.host, self.tls_port)}")
            with selectors.DefaultSelector() as selector:
                for sock, over_tls in listening:
                    selector.register(sock, selectors.EVENT_READ, over_tls)
                while not stop.is_set():
                    for key, _ in selector.select(_ACCEPT_POLL_SECONDS):
                        self._accept(key.fileobj, over_tls=key.data)
        finally:
            for sock, _ in listening:
                sock.close()
        self._stop_connections(stop_timeout)
        self.sessions.close()

    def _accept(self, listening: socket.socket, *, over_tls: bool) -> None:
        try:
            sock, address = listening.accept()
        except OSError:  # the peer gave up already (ECONNABORTED), or out of descriptors for now
            return
        peer = f"{address[0]}:{address[1]}"
        with self._lock:
            if len(self._connections) >= self.max_connections:
                logger.warning(
                    "MLLP connection from %s refused: %d connections open", peer, len(self._connections)
                )
                sock.close()
                return
            thread = threading.Thread(
                target=self._serve, args=(sock, peer, over_tls), name=f"mllp {peer}", daemon=True
            )
            self._connections[thread] = sock
        thread.start()

    def _serve(self, sock: socket.socket, peer: str, over_tls: bool) -> None:
        """One connection, until it closes, breaks its framing, stalls or the listener stops."""
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if over_tls:
                sock = self._handshake(sock)
            # An ACK the peer does not take (its receive buffer full) fails after the stall timeout.
            mllp.set_kernel_timeout(sock, socket.SO_SNDTIMEO, self.timeout)
            frames = mllp.FrameReader(
                sock, max_bytes=self.max_bytes, timeout=self.timeout, idle_timeout=self.idle_timeout
            )
            session = None  # the database session of this connection's previous message
            while True:
                try:
                    message = frames.next_frame()
                except mllp.TooLargeError as exc:
                    with self.sessions.lend(prefer=session) as session:
                        answer = services.reject_oversized(exc.prefix, exc.size, peer=peer)
                    sock.sendall(mllp.frame(answer))
                    continue
                if message is None:
                    break
                with self.sessions.lend(prefer=session) as session:
                    ack = services.receive_message(message, peer=peer, over_tls=over_tls).ack
                sock.sendall(mllp.frame(ack))
        except mllp.MllpError as exc:
            logger.warning("MLLP connection from %s closed: %s", peer, exc)
        except (OSError, ssl.SSLError) as exc:  # resets, timeouts, TLS failures, a stopping listener
            logger.info("MLLP connection from %s ended: %s", peer, exc)
        except Exception:
            logger.exception("MLLP connection from %s: unexpected error; closing it", peer)
        finally:
            sock.close()
            with self._lock:
                self._connections.pop(threading.current_thread(), None)

    def _handshake(self, sock: socket.socket) -> ssl.SSLSocket:
        assert self.tls_context is not None
        sock.settimeout(self.timeout)
        secure = self.tls_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        with self._lock:  # stopping shuts the socket the listener knows of: now this one
            self._connections[threading.current_thread()] = secure
        try:
            secure.do_handshake()
        except BaseException:
            secure.close()
            raise
        return secure

    def _stop_connections(self, stop_timeout: float) -> None:
        """Shut every connection's reading side (one waiting for a message ends; one processing
        a message answers it first), wait up to `stop_timeout`, then close what is left."""
        with self._lock:
            open_ = dict(self._connections)
        if open_:
            self.say(f"waiting up to {stop_timeout:g} s for {len(open_)} connection(s)")
        for sock in open_.values():
            _shutdown(sock, socket.SHUT_RD)
        deadline = time.monotonic() + stop_timeout
        for thread in open_:
            thread.join(max(0.0, deadline - time.monotonic()))
        for thread, sock in open_.items():
            if thread.is_alive():
                _shutdown(sock, socket.SHUT_RDWR)
                thread.join(5)


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def _shutdown(sock: socket.socket, how: int) -> None:
    """Shut a side of the connection at the socket level (for TLS too: `SSLSocket.shutdown`
    would also drop the TLS layer that the ACK being written still needs)."""
    with contextlib.suppress(OSError):  # closed, or never connected
        socket.socket.shutdown(sock, how)


def _bind(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
