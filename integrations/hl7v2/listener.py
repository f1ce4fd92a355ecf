"""The MLLP listener: asyncio for the network, a thread pool for each message's database work.

`MllpListener(...).run(stop_event)` serves `BTT_MLLP_PORT` (and `BTT_MLLP_TLS_PORT` with TLS when a
certificate is configured) until `stop_event` is set; `manage.py mllp_listener` (the `mllp` child
of `serve`) runs it.

- Every connection is a coroutine reading frames (`mllp.FrameReader`); a complete message goes to
  `services.receive_message` in a worker thread (`BTT_MLLP_WORKERS`, each with its own database
  connection; `workers.WorkerPool`: the thread of the connection's previous message when it is
  idle, so a connection keeps to one thread and database session). On a plain connection the
  worker writes the ACK to the socket itself once the message is committed, so the sender has
  it without waiting for the event loop's thread to be woken and scheduled (on a busy 2-core
  machine that took a tenth of each message's time); what the socket does not take at once, and
  every ACK over TLS, the event loop writes. Messages on one connection are handled in order,
  one at a time (MLLP senders wait for each ACK); connections do not wait for each other, and a
  slow database holds up only the connections whose messages wait for it.
- Limits: `BTT_MLLP_MAX_CONNECTIONS` (more are closed at once), `BTT_MLLP_MAX_MESSAGE_BYTES` (an
  AR after the message's end block, the connection goes on), `BTT_MLLP_TIMEOUT` (a peer silent in
  the middle of a message, or a TLS handshake, is disconnected; nothing of that message is kept),
  `BTT_MLLP_IDLE_TIMEOUT` between messages. Broken framing closes the connection.
- Stopping: no new connections; messages being processed finish and are answered (up to
  `stop_timeout`), then connections are closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
from collections.abc import Callable

from django.conf import settings
from django.db import close_old_connections

from integrations.hl7v2 import mllp, services, tls
from integrations.hl7v2.workers import Worker, WorkerPool

logger = logging.getLogger(__name__)


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
        self.workers = WorkerPool(settings.BTT_MLLP_WORKERS, "mllp-db")
        self.connections = 0
        self._tasks: set[asyncio.Task] = set()

    def run(self, stop: threading.Event, *, stop_timeout: float = 10.0) -> None:
        """Serve until `stop` is set (blocking). OSError when a port cannot be bound."""
        asyncio.run(self._main(stop, stop_timeout))

    async def _main(self, stop: threading.Event, stop_timeout: float) -> None:
        servers = [await asyncio.start_server(self._plain, self.host, self.port, limit=2**20)]
        self.say(f"listening: MLLP on {_bind(self.host, self.port)}")
        if self.tls_context is not None:
            servers.append(
                await asyncio.start_server(
                    self._secure,
                    self.host,
                    self.tls_port,
                    ssl=self.tls_context,
                    ssl_handshake_timeout=self.timeout,
                    limit=2**20,
                )
            )
            self.say(f"listening: MLLP over TLS on {_bind(self.host, self.tls_port)}")
        while not stop.is_set():
            await asyncio.sleep(0.2)
        for server in servers:
            server.close()
        if self._tasks:
            self.say(f"waiting up to {stop_timeout:g} s for {len(self._tasks)} connection(s)")
            _, pending = await asyncio.wait(self._tasks, timeout=stop_timeout)
            for task in pending:
                task.cancel()
        self.workers.shutdown()

    async def _plain(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._connection(reader, writer, over_tls=False)

    async def _secure(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._connection(reader, writer, over_tls=True)

    async def _connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, over_tls: bool
    ) -> None:
        address = writer.get_extra_info("peername") or ("?", 0)
        peer = f"{address[0]}:{address[1]}"
        task = asyncio.current_task()
        if self.connections >= self.max_connections:
            logger.warning("MLLP connection from %s refused: %d connections open", peer, self.connections)
            writer.close()
            return
        self.connections += 1
        if task is not None:
            self._tasks.add(task)
        frames = mllp.FrameReader(
            reader, max_bytes=self.max_bytes, timeout=self.timeout, idle_timeout=self.idle_timeout
        )
        worker: Worker | None = None  # the thread of this connection's previous message
        # asyncio's TLS transport encrypts in the event loop: only a plain socket can be written
        # from a worker.
        sock = None if over_tls else writer.get_extra_info("socket")
        try:
            while True:
                try:
                    message = await frames.next_frame()
                except mllp.TooLargeError as exc:
                    worker, answer = await asyncio.wrap_future(
                        self.workers.submit(_reject_oversized, exc.prefix, exc.size, peer, prefer=worker)
                    )
                    writer.write(mllp.frame(answer))
                    await writer.drain()
                    continue
                if message is None:
                    break
                # Only while the transport has nothing queued: the worker's bytes must not overtake
                # an earlier ACK (nothing else writes to the connection until the future is done).
                direct_fd = (
                    sock.fileno() if sock is not None and not writer.transport.get_write_buffer_size() else -1
                )
                worker, unsent = await asyncio.wrap_future(
                    self.workers.submit(_receive, message, peer, over_tls, direct_fd, prefer=worker)
                )
                if unsent:
                    writer.write(unsent)
                    await writer.drain()
        except mllp.MllpError as exc:
            logger.warning("MLLP connection from %s closed: %s", peer, exc)
        except (ConnectionError, ssl.SSLError) as exc:
            logger.info("MLLP connection from %s ended: %s", peer, exc)
        finally:
            self.connections -= 1
            if task is not None:
                self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(TimeoutError, ConnectionError, ssl.SSLError):
                await asyncio.wait_for(writer.wait_closed(), 5)


def _receive(message: bytes, peer: str, over_tls: bool, direct_fd: int) -> bytes:
    """Receive one message; its framed ACK, less what was written to `direct_fd` (a plain
    connection's socket; -1: none) already."""
    # Worker threads keep their database connection between messages; one a failure left
    # unusable (a database restart) is replaced before the next message.
    close_old_connections()
    framed = mllp.frame(services.receive_message(message, peer=peer, over_tls=over_tls).ack)
    if direct_fd < 0:
        return framed
    return framed[mllp.write_nowait(direct_fd, framed) :]


def _reject_oversized(prefix: bytes, size: int, peer: str) -> bytes:
    return services.reject_oversized(prefix, size, peer=peer)


def _bind(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
