"""`python manage.py add_dicom_peer AET HOST PORT --allow ...`: adds or updates a remote AE, idempotently,
and refuses bad input with a clear message (run as a real process, as scripts run it)."""

from __future__ import annotations

import pytest

from integrations.dicom.models import RemoteAE
from tests.processes import ProcessLauncher

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def add_peer(process_launcher: ProcessLauncher, test_database_env: dict[str, str]):
    def run(*args: str):
        return process_launcher.manage("add_dicom_peer", *args, env=test_database_env)

    return run


def test_add_then_update(add_peer) -> None:
    added = add_peer(
        "ORTHANC", "pacs.example.org", "4242", "--allow", "store,find,move,get", "--description", "main PACS"
    )
    assert added.returncode == 0, added.stderr
    assert (
        added.stdout.strip()
        == "Added DICOM peer ORTHANC at pacs.example.org:4242, allowed: store,find,move,get"
    )
    peer = RemoteAE.objects.get(ae_title="ORTHANC")
    assert (peer.host, peer.port, peer.description, peer.use_tls) == (
        "pacs.example.org",
        4242,
        "main PACS",
        False,
    )
    assert (peer.allow_store, peer.allow_find, peer.allow_move, peer.allow_get) == (True, True, True, True)

    updated = add_peer("ORTHANC", "10.0.0.5", "11112", "--allow", "find,move", "--tls")
    assert updated.returncode == 0, updated.stderr
    assert updated.stdout.strip() == "Updated DICOM peer ORTHANC at 10.0.0.5:11112 (TLS), allowed: find,move"
    peer.refresh_from_db()
    assert (peer.host, peer.port, peer.use_tls, peer.description) == ("10.0.0.5", 11112, True, "main PACS")
    assert (peer.allow_store, peer.allow_find, peer.allow_move, peer.allow_get) == (False, True, True, False)

    again = add_peer("ORTHANC", "10.0.0.5", "11112", "--allow", "find,move", "--tls")
    assert again.returncode == 0
    assert RemoteAE.objects.count() == 1


def test_defaults_and_no_permissions(add_peer) -> None:
    assert add_peer("MODALITY1", "ct1.example.org", "104").returncode == 0
    peer = RemoteAE.objects.get(ae_title="MODALITY1")
    assert (peer.allow_store, peer.allow_find, peer.allow_move, peer.allow_get) == (True, True, True, True)
    none = add_peer("MODALITY1", "ct1.example.org", "104", "--allow", "")
    assert none.stdout.strip().endswith("allowed: nothing")
    peer.refresh_from_db()
    assert not any((peer.allow_store, peer.allow_find, peer.allow_move, peer.allow_get))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("ABCDEFGHIJKLMNOPQ", "h", "104"), "AE title must be 1 to 16 characters, got 'ABCDEFGHIJKLMNOPQ'"),
        (("", "h", "104"), "AE title must be 1 to 16 characters, got ''"),
        (("BAD\\AE", "h", "104"), "AE title may hold printable ASCII characters but no backslash"),
        (("TAB\tAE", "h", "104"), "AE title may hold printable ASCII characters but no backslash"),
        (("PACS", "h", "0"), "PORT must be between 1 and 65535, got 0"),
        (("PACS", "h", "70000"), "PORT must be between 1 and 65535, got 70000"),
        (("PACS", "h", "abc"), "PORT must be a number between 1 and 65535, got 'abc'"),
        (("PACS", "bad host", "104"), "host must be a host name or IP address, got 'bad host'"),
        (
            ("PACS", "h", "104", "--allow", "store,delete"),
            "unknown operation(s) delete: use store, find, move, get",
        ),
    ],
)
def test_bad_input_is_refused_clearly(add_peer, args: tuple[str, ...], message: str) -> None:
    result = add_peer(*args)
    assert result.returncode == 1
    assert f"CommandError: {message}" in result.stderr
    assert not RemoteAE.objects.exists()
