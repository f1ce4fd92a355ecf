"""The DICOM node's database sessions (`DicomNode` lends each association one of
btt_health/db_sessions.py's): the node connects to PostgreSQL when it starts, and the associations
that follow do their database work (the calling AE's permissions at least) on that session,
instead of each opening a connection of its own (~5 ms, and cold caches, per association)."""

from __future__ import annotations

import os
import re
import time

import pytest
from django.db import connection
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from tests.dicom.conftest import DicomNode

pytestmark = pytest.mark.django_db(transaction=True)


def _postgresql_client_ports(pid: int) -> set[int]:
    """The local ports of process `pid`'s TCP connections to PostgreSQL's port."""
    sockets = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        match = re.fullmatch(r"socket:\[(\d+)\]", target)
        if match:
            sockets.add(match.group(1))
    server_port = int(connection.settings_dict["PORT"] or 5432)
    ports = set()
    for table in (f"/proc/{pid}/net/tcp", f"/proc/{pid}/net/tcp6"):
        with open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                local, remote, inode = fields[1], fields[2], fields[9]
                if inode in sockets and int(remote.rsplit(":", 1)[1], 16) == server_port:
                    ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


def test_associations_work_on_the_sessions_the_node_keeps_open(start_dicom_node) -> None:
    """Six associations one after the other use the node's open sessions: the one it opened at
    start and, while the previous association is still ending (pynetdicom waits for the peer to
    close), a second one; never a connection of their own each."""
    if connection.vendor != "postgresql":
        pytest.fail("needs PostgreSQL (set DATABASE_URL to a PostgreSQL database)")
    node: DicomNode = start_dicom_node()
    at_start = _postgresql_client_ports(node.process.pid)
    assert len(at_start) == 1, "the node opened one database session when it started"

    scu = AE(ae_title="MODALITY")
    scu.add_requested_context(Verification)
    seen: set[int] = set()
    for _ in range(6):
        assoc = scu.associate(node.host, node.port, ae_title=node.aet)
        assert assoc.is_established  # the node looked up MODALITY's permissions meanwhile
        assert assoc.send_c_echo().Status == 0x0000
        seen |= _postgresql_client_ports(node.process.pid)
        assoc.release()
        time.sleep(0.05)  # a modality's pace between images, not back to back
    assert at_start <= seen
    assert len(seen) <= 2, f"{len(seen)} PostgreSQL connections for 6 associations"
    assert at_start <= _postgresql_client_ports(node.process.pid), "the first session stays open"
