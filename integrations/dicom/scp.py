"""The DICOM node's application entity: listeners, presentation contexts, association policy.

`DicomNode` is what `python manage.py dicom_scp` (and so the `dicom` child of `serve`) runs:

- one pynetdicom AE titled `BTT_DICOM_AET`, listening on `BTT_DICOM_HOST:BTT_DICOM_PORT`, and,
  when `BTT_DICOM_TLS_CERT` / `BTT_DICOM_TLS_KEY` are set, a second DICOM TLS listener on
  `BTT_DICOM_TLS_PORT` (the TLS handshake runs in the connection's own thread, so a client that
  stalls in it holds up nobody else);
- presentation contexts: Verification and every storage SOP class with every transfer syntax
  (`scp_store.add_store_contexts`), the Query/Retrieve classes (`scp_query`). Per context the
  node accepts the first transfer syntax the *sender* proposes that it supports, so a sender
  that lists the encoding of its file first never has to convert it (see `on_requested`);
- handlers: `scp_store.STORE_HANDLERS` (C-ECHO, C-STORE), `scp_query.QUERY_RETRIEVE_HANDLERS`
  (C-FIND, C-MOVE, C-GET), and the association handlers below;
- limits: `BTT_DICOM_MAX_PDU` (the largest PDU offered and accepted: a peer that sends a bigger
  one is aborted), `BTT_DICOM_TIMEOUT` (ACSE, DIMSE and network timeouts: a peer that connects
  and says nothing, or stops in the middle, is dropped), `BTT_DICOM_MAX_ASSOCIATIONS` (more are
  rejected, transient, local limit exceeded).

Association policy (`on_requested`, before negotiation): with `BTT_DICOM_ALLOW_UNKNOWN_AE` off
(allow-list mode) a calling AE title that is no RemoteAE is rejected with A-ASSOCIATE-RJ
(rejected-permanent, service-user, calling AE title not recognised); a known AE that may do none
of what it proposes (say, only storage contexts without allow_store, or allow_get for a C-GET
requestor) is rejected (rejected-permanent, service-user, no reason given). Each operation is
checked again in its handler (C-STORE: 0x0124 refused, not authorised).

Each association runs in its own thread, on a database session the node lends it for its lifetime
(`btt_health.db_sessions`: opened when the node starts, kept open between associations, so an
association does not wait for a connection of its own); a data set left half-received by an
abort is deleted from the staging folder when it ends.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import secrets
import socket
import ssl
import struct
import tempfile
import threading
import time
import types
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.db import connections
from pynetdicom import (
    AE,
    PYNETDICOM_IMPLEMENTATION_UID,
    PYNETDICOM_IMPLEMENTATION_VERSION,
    _config,
    dimse_messages,
    evt,
)
from pynetdicom.events import Event
from pynetdicom.transport import ThreadedAssociationServer

from btt_health.db_sessions import DatabaseSessions
from integrations.dicom import reactor, receive, scp_query, scp_store, send, services, tls
from integrations.dicom.storage import get_instance_storage

logger = logging.getLogger("integrations.dicom.scp")

# Database sessions a DICOM process keeps open while no association uses them (more are opened
# for concurrent associations, up to their limit, and closed when given back beyond these).
IDLE_DB_SESSIONS_KEPT = 4

# SOP classes of each Query/Retrieve operation, for the association-time permission check.
_QR_OPERATIONS = {
    "1.2.840.10008.5.1.4.1.2.1.1": "find",  # Patient Root FIND
    "1.2.840.10008.5.1.4.1.2.2.1": "find",  # Study Root FIND
    "1.2.840.10008.5.1.4.1.2.3.1": "find",  # Patient/Study Only FIND (retired)
    "1.2.840.10008.5.1.4.1.2.1.2": "move",
    "1.2.840.10008.5.1.4.1.2.2.2": "move",
    "1.2.840.10008.5.1.4.1.2.3.2": "move",
    "1.2.840.10008.5.1.4.1.2.1.3": "get",
    "1.2.840.10008.5.1.4.1.2.2.3": "get",
    "1.2.840.10008.5.1.4.1.2.3.3": "get",
}
_VERIFICATION = "1.2.840.10008.1.1"
_STORAGE = frozenset(scp_store.STORAGE_SOP_CLASSES)


def configure_pynetdicom() -> None:
    """Process-wide pynetdicom settings of the SCP (call before building the AE).

    Received data sets go to a file as they arrive (never whole into memory), staged in the
    instance storage's own folder so storing them is a rename (`StagedFile`); the reactor loops wait for events instead of polling
    (`reactor.py`); pynetdicom's chatty per-PDU logging stays off unless
    BTT_LOG_LEVEL is DEBUG.
    """
    _config.STORE_RECV_CHUNKED_DATASET = True
    reactor.install()
    tempfile.tempdir = str(get_instance_storage().staging_dir())
    dimse_messages.NamedTemporaryFile = _staging_file
    dimse_messages.create_file_meta = _file_meta_values
    dimse_messages.write_file_meta_info = _write_file_meta
    if settings.BTT_LOG_LEVEL != "DEBUG":
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
        # pynetdicom's standard notification handlers format a description of every DIMSE
        # message and PDU for its (DEBUG/INFO) log whether or not it is emitted: ~3% of the CPU
        # per stored instance. Without them bound, nothing the WARNING level shows is lost.
        _config.LOG_HANDLER_LEVEL = "none"


class StagedFile:
    """The file a received data set is written to as it arrives, in the staging folder: what
    pynetdicom uses of the `NamedTemporaryFile(delete=False)` it would make (`name`, `write`,
    `file.flush()`, `close()`), as one unbuffered file descriptor, without tempfile's wrapper
    layers and random name generator (pynetdicom writes whole PDV fragments: buffering them only
    copies them once more). Flushing does nothing: nothing is buffered, and the fsync before
    the instance is acknowledged writes the file out in one go. (Starting the kernel's
    writeback after every fragment with `sync_file_range` cost about 0.3 ms more CPU per
    512 KiB instance, each call a small write of its own, and did not make one association
    faster: docs/roadmap.md.)"""

    def __init__(self, folder: str, suffix: str = "") -> None:
        self._fd = -1
        for _ in range(100):
            name = os.path.join(folder, f"tmp{secrets.token_hex(8)}{suffix}")
            try:
                self._fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            except FileExistsError:
                continue
            break
        else:  # pragma: no cover - 100 collisions of 64 random bits
            raise FileExistsError(f"no free staging file name in {folder}")
        self.name = name
        self.file = self  # pynetdicom flushes `handle.file`

    def write(self, data: bytes | bytearray | memoryview) -> int:
        written = os.write(self._fd, data)
        total = memoryview(data).nbytes
        while written < total:  # a regular file takes all of it but for an interruption
            written += os.write(self._fd, memoryview(data)[written:])
        return total

    def flush(self) -> None:
        pass

    def fileno(self) -> int:
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def __del__(self) -> None:
        self.close()


def _staging_file(*args: Any, suffix: str = "", **kwargs: Any) -> StagedFile:
    """Stands in for `tempfile.NamedTemporaryFile(delete=False, mode="wb", suffix=...)` where
    pynetdicom stages a received data set: a `StagedFile` in the staging folder."""
    return StagedFile(tempfile.gettempdir(), suffix)


def _file_meta_values(
    *, sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, **_: Any
) -> tuple[str, str, str]:
    """Stands in for pynetdicom's `create_file_meta` when it stages a received data set."""
    return str(sop_class_uid), str(sop_instance_uid), str(transfer_syntax)


def _write_file_meta(handle: Any, values: tuple[str, str, str]) -> None:
    """Stands in for pydicom's `write_file_meta_info` there: the same bytes, without building a
    pydicom data set per instance (a fifth of a millisecond each)."""
    handle.write(encode_file_meta(*values))


def _element(tag: int, vr: bytes, value: bytes) -> bytes:
    """One explicit VR little endian element (File Meta Information encoding)."""
    if vr == b"OB":
        return struct.pack("<HH2sxxL", tag >> 16, tag & 0xFFFF, vr, len(value)) + value
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, len(value)) + value


def _uid_value(uid: str) -> bytes:
    value = uid.encode("ascii")
    return value + b"\x00" if len(value) % 2 else value


def encode_file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> bytes:
    """The File Meta Information group (after preamble and prefix) that pynetdicom writes for a
    received data set: version 00\\01, the Media Storage SOP Class / Instance UIDs, the transfer
    syntax, and pynetdicom's implementation class UID and version name."""
    version_name = PYNETDICOM_IMPLEMENTATION_VERSION.encode("ascii")
    if len(version_name) % 2:
        version_name += b" "
    body = b"".join(
        (
            _element(0x00020001, b"OB", b"\x00\x01"),
            _element(0x00020002, b"UI", _uid_value(sop_class_uid)),
            _element(0x00020003, b"UI", _uid_value(sop_instance_uid)),
            _element(0x00020010, b"UI", _uid_value(transfer_syntax)),
            _element(0x00020012, b"UI", _uid_value(PYNETDICOM_IMPLEMENTATION_UID)),
            _element(0x00020013, b"SH", version_name),
        )
    )
    return _element(0x00020000, b"UL", struct.pack("<L", len(body))) + body


def build_ae() -> AE:
    """The node's AE: title, limits, timeouts and supported presentation contexts."""
    ae = AE(ae_title=settings.BTT_DICOM_AET)
    ae.maximum_pdu_size = settings.BTT_DICOM_MAX_PDU
    ae.acse_timeout = settings.BTT_DICOM_TIMEOUT
    ae.dimse_timeout = settings.BTT_DICOM_TIMEOUT
    ae.network_timeout = settings.BTT_DICOM_TIMEOUT
    ae.maximum_associations = settings.BTT_DICOM_MAX_ASSOCIATIONS
    ae.require_called_aet = settings.BTT_DICOM_CHECK_CALLED_AET
    scp_store.add_store_contexts(ae)
    scp_query.add_query_retrieve_contexts(ae)
    return ae


# --- Association handlers ------------------------------------------------------------------------


def on_conn_open(event: Event) -> None:
    """A peer connected: guard its PDU sizes and clean up after its association thread."""
    assoc = event.assoc
    assoc.dul._read_pdu_data = types.MethodType(receive.read_pdu, assoc.dul)
    reactor.attach(assoc)
    send.attach(assoc)
    assoc.btt_stats = {"stored": 0, "failed": 0}
    run = assoc.run
    sessions = assoc.ae.btt_db_sessions  # `DicomNode`'s

    def run_and_clean_up() -> None:
        try:
            # The node's own, connected with warm caches; an association beyond the limit
            # (rejected at once) must not wait for one.
            with sessions.lend(wait=False):
                run()
        finally:
            _discard_partial_dataset(assoc)
            reactor.detach(assoc)
            connections.close_all()  # this thread's own connections; the thread ends now

    assoc.run = run_and_clean_up


def on_requested(event: Event) -> None:
    """A-ASSOCIATE-RQ received: apply the allow-list and permissions, prefer the sender's
    transfer syntaxes."""
    assoc = event.assoc
    request = assoc.requestor.primitive
    calling = str(request.calling_ae_title).strip()
    address = f"{assoc.requestor.address}:{assoc.requestor.port}"
    proposed = list(request.presentation_context_definition_list)
    try:
        peer = services.peer_permissions(calling)
    except Exception:
        logger.exception("association from %s (%s): cannot read the remote AEs; rejecting", calling, address)
        _reject(assoc, 0x02, 0x01, 0x01)  # rejected-transient, service-user, no reason given
        return
    assoc.btt_peer = peer
    if not peer.known and not settings.BTT_DICOM_ALLOW_UNKNOWN_AE:
        logger.warning(
            "association from %s (%s) rejected: calling AE title not recognised (allow-list mode)",
            calling,
            address,
        )
        # rejected-permanent, service-user, calling AE title not recognised
        _reject(assoc, 0x01, 0x01, 0x03)
        return
    if not any(_usable(peer, str(cx.abstract_syntax)) for cx in proposed):
        logger.warning(
            "association from %s (%s) rejected: the AE may do none of what it proposes "
            "(allowed: store=%s find=%s move=%s get=%s)",
            calling,
            address,
            peer.store,
            peer.find,
            peer.move,
            peer.get,
        )
        _reject(assoc, 0x01, 0x01, 0x01)  # rejected-permanent, service-user, no reason given
        return
    _prefer_requested_transfer_syntaxes(assoc, proposed)


def _reject(assoc: Any, result: int, source: int, reason: int) -> None:
    """Send A-ASSOCIATE-RJ and wait until it is on the wire and the connection closed, as
    pynetdicom's own negotiation does (the association thread closes the socket right after)."""
    assoc.acse.send_reject(result, source, reason)
    evt.trigger(assoc, evt.EVT_REJECTED, {})
    assoc.kill()


def _usable(peer: services.PeerPermissions, abstract_syntax: str) -> bool:
    if abstract_syntax == _VERIFICATION:
        return True
    if abstract_syntax in _STORAGE:  # storage SCU, or a C-GET requestor taking the SCP role
        return peer.store or peer.get
    operation = _QR_OPERATIONS.get(abstract_syntax)
    return peer.allows(operation) if operation else False


def _prefer_requested_transfer_syntaxes(assoc: Any, proposed: list) -> None:
    """Reorder our transfer syntaxes per abstract syntax in the order the requestor proposed them.

    pynetdicom accepts, for each proposed context, the first of the *acceptor's* syntaxes that
    the requestor offered; following the requestor's order instead means a sender never has to
    convert (a big endian file stays big endian, an implicit VR one implicit).
    """
    wanted: dict[str, list[str]] = {}
    for cx in proposed:
        order = wanted.setdefault(str(cx.abstract_syntax), [])
        order.extend(str(ts) for ts in cx.transfer_syntax if str(ts) not in order)
    for cx in assoc.acceptor.supported_contexts:
        order = wanted.get(str(cx.abstract_syntax))
        if not order:
            continue
        ours = [str(ts) for ts in cx.transfer_syntax]
        first = [ts for ts in order if ts in ours]
        if first and ours[: len(first)] != first:
            cx.transfer_syntax = first + [ts for ts in ours if ts not in first]


def on_accepted(event: Event) -> None:
    assoc = event.assoc
    logger.info(
        "association from %s (%s:%s) accepted: %d presentation context(s)",
        str(assoc.requestor.ae_title).strip(),
        assoc.requestor.address,
        assoc.requestor.port,
        len(assoc.accepted_contexts),
    )


def on_ended(event: Event) -> None:
    assoc = event.assoc
    how = "released" if event.event == evt.EVT_RELEASED else "aborted"
    stats = getattr(assoc, "btt_stats", {})
    logger.info(
        "association from %s (%s:%s) %s: %d instance(s) stored, %d refused",
        str(assoc.requestor.ae_title).strip(),
        assoc.requestor.address,
        assoc.requestor.port,
        how,
        stats.get("stored", 0),
        stats.get("failed", 0),
    )


ASSOCIATION_HANDLERS: list[tuple] = [
    (evt.EVT_CONN_OPEN, on_conn_open),
    (evt.EVT_REQUESTED, on_requested),
    (evt.EVT_ACCEPTED, on_accepted),
    (evt.EVT_RELEASED, on_ended),
    (evt.EVT_ABORTED, on_ended),
]


def handlers() -> list[tuple]:
    """Every handler `start_server` binds: store, query/retrieve, association policy and logs."""
    return [*scp_store.STORE_HANDLERS, *scp_query.QUERY_RETRIEVE_HANDLERS, *ASSOCIATION_HANDLERS]


def _discard_partial_dataset(assoc: Any) -> None:
    """Delete the staging file of a data set whose transfer never finished (aborted, dropped)."""
    message = getattr(getattr(assoc, "dimse", None), "message", None)
    partial = getattr(message, "_data_set_file", None)
    if partial is None:
        return
    with contextlib.suppress(OSError):
        partial.close()
    with contextlib.suppress(OSError):
        os.unlink(partial.name)
    logger.info("discarded a partly received data set from %s", str(assoc.requestor.ae_title).strip())


# --- Listeners ------------------------------------------------------------------------------------


class SharedContexts(list):
    """The supported presentation contexts, copied cheaply for each association.

    pynetdicom deep-copies the server's contexts for every association: ~170 storage SOP classes
    times ~45 transfer syntaxes, each UID validated again, some 40 ms of CPU per association. A
    shallow copy of each context suffices: nothing changes a context's lists in place
    (`on_requested` assigns new ones).
    """

    def __deepcopy__(self, memo: dict) -> list:
        return [copy.copy(context) for context in self]


class NodeAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded association server, with two fixes for peers that stall:

    - every accepted connection gets the network timeout (pynetdicom leaves accepted sockets
      blocking, so a peer that stops in the middle of a PDU would hold its thread for ever);
    - the TLS handshake runs in the connection's own thread (pynetdicom does it in the listening
      thread, so one client that connects and stays silent would block every other one);

    and, as one of several SCP processes, it takes its connections from the parent that accepts
    them (`handoff_socket`: a Unix socket over which `hand_off` passes each accepted connection)
    instead of listening itself.
    """

    def __init__(self, *args: Any, handoff_socket: socket.socket | None = None, **kwargs: Any) -> None:
        self._handoff_socket = handoff_socket
        super().__init__(*args, **kwargs)

    def server_bind(self) -> None:
        if self._handoff_socket is None:
            super().server_bind()
            return
        self.socket.close()
        self.socket = self._handoff_socket

    def server_activate(self) -> None:
        if self._handoff_socket is None:
            super().server_activate()

    def get_request(self) -> tuple[socket.socket, Any]:
        if self._handoff_socket is None:
            client_socket, address = self.socket.accept()
        else:
            client_socket, address = _handed_over(self.socket)
        client_socket.settimeout(self.ae.network_timeout)
        if self.ssl_context:
            client_socket = self.ssl_context.wrap_socket(
                client_socket, server_side=True, do_handshake_on_connect=False
            )
        return client_socket, address

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        if isinstance(request, ssl.SSLSocket):
            try:
                request.do_handshake()
            except (OSError, ssl.SSLError) as exc:
                logger.warning("DICOM TLS handshake with %s failed: %s", client_address[0], exc)
                self.shutdown_request(request)
                return
        super().process_request_thread(request, client_address)


def _warm_up_task_queue() -> None:
    """Load the study-complete tasks and open the broker connection now, so the first instance
    of the first study does not wait for imports and a connection (about 150 ms)."""
    from btt_health.celery import app as celery_app
    from integrations.dicom import tasks  # noqa: F401  (the tasks the ingest path queues)

    # The app's task registry is finalised on first use (tens of milliseconds): now, not while
    # the first instance's sender waits.
    celery_app.finalize()
    try:
        with celery_app.producer_or_acquire():
            pass
    except Exception as exc:  # the broker may come up later; queueing retries then
        logger.warning("broker not reachable at start (%s); tasks will be queued once it is", exc)


def _warm_up_database(sessions: DatabaseSessions) -> None:
    """Open the first association's database session now and run what every association asks
    first (the calling AE's permissions), so the first sender waits neither for a connection
    (~5 ms) nor for a new session's cold caches."""
    with sessions.lend():
        services.peer_permissions("")


def hand_off(connection: socket.socket, to: socket.socket) -> None:
    """Pass an accepted connection to an SCP process over its handoff socket (the parent of
    several processes accepts, and spreads the connections over them in turn)."""
    socket.send_fds(to, [b"c"], [connection.fileno()])


def _handed_over(handoff: socket.socket) -> tuple[socket.socket, Any]:
    """The next connection the parent handed over, and its peer address."""
    _, fds, _, _ = socket.recv_fds(handoff, 1, 1)
    if not fds:
        raise OSError("the parent closed the handoff socket")
    connection = socket.socket(fileno=fds[0])
    return connection, connection.getpeername()


def listener_ports() -> dict[str, int]:
    """The ports the node listens on, by name: `dicom`, and `tls` when DICOM TLS is configured."""
    ports = {"dicom": settings.BTT_DICOM_PORT}
    if tls.server_context() is not None:
        ports["tls"] = settings.BTT_DICOM_TLS_PORT
    return ports


class DicomNode:
    """The running SCP: `start()` its listeners, `stop()` them (see the module docstring).

    `handoff_sockets` (by `listener_ports()` name): one of several SCP processes (`manage.py
    dicom_scp --processes N`), taking the connections of each listener from those sockets."""

    def __init__(
        self,
        *,
        host: str | None = None,
        port: int | None = None,
        tls_port: int | None = None,
        handoff_sockets: dict[str, socket.socket] | None = None,
        max_associations: int | None = None,
    ) -> None:
        configure_pynetdicom()
        self.host = host or settings.BTT_DICOM_HOST
        self.port = settings.BTT_DICOM_PORT if port is None else port
        self.tls_port = settings.BTT_DICOM_TLS_PORT if tls_port is None else tls_port
        self.handoff_sockets = handoff_sockets or {}
        self.ae = build_ae()
        if max_associations is not None:
            self.ae.maximum_associations = max_associations
        # Each association works on a session of these for its lifetime (`on_conn_open`).
        self.ae.btt_db_sessions = DatabaseSessions(
            self.ae.maximum_associations, keep_idle=min(IDLE_DB_SESSIONS_KEPT, self.ae.maximum_associations)
        )
        self.servers: list[ThreadedAssociationServer] = []

    def _serve(self, name: str, port: int, ssl_context: ssl.SSLContext | None) -> ThreadedAssociationServer:
        server = self.ae.make_server(
            (self.host, port),
            ssl_context=ssl_context,
            evt_handlers=handlers(),
            server_class=NodeAssociationServer,
            contexts=SharedContexts(self.ae.supported_contexts),
            handoff_socket=self.handoff_sockets.get(name),
        )
        thread = threading.Thread(target=server.serve_forever, name=f"dicom-listener-{port}", daemon=True)
        thread.start()
        self.ae._servers.append(server)  # as AE.start_server does, so AE.shutdown() finds it
        self.servers.append(server)
        return server

    def start(self) -> list[str]:
        """Start listening; returns what listens where, one line each."""
        get_instance_storage().prepare()
        removed = services.cleanup_staging()
        if removed:
            logger.info("removed %d stale staged file(s)", removed)
        _warm_up_task_queue()
        _warm_up_database(self.ae.btt_db_sessions)
        lines = []
        self._serve("dicom", self.port, None)
        lines.append(f"DICOM {settings.BTT_DICOM_AET} on {self.host}:{self.port}")
        context = tls.server_context()
        if context is not None:
            self._serve("tls", self.tls_port, context)
            client_auth = (
                "client certificates required" if settings.BTT_DICOM_TLS_CA else "no client certificates"
            )
            lines.append(f"DICOM TLS {settings.BTT_DICOM_AET} on {self.host}:{self.tls_port} ({client_auth})")
        return lines

    def stop(self, timeout: float = 10.0, say: Callable[[str], None] | None = None) -> None:
        """Stop accepting, let running associations finish for up to `timeout` seconds, abort the rest."""
        for server in self.servers:
            server.shutdown()
        self.servers = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._acceptors():
            time.sleep(0.05)
        left = self._acceptors()
        if left and say:
            say(f"aborting {len(left)} association(s) still running after {timeout:g}s")
        for assoc in left:
            assoc.abort()
        for assoc in left:
            assoc.join(timeout=5)
        self.ae.btt_db_sessions.close()

    def _acceptors(self) -> list:
        return [assoc for assoc in self.ae.active_associations if assoc.is_acceptor and assoc.is_alive()]
