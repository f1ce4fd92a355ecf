"""DICOM TLS: the node's second listener with certificates from the environment.

A test CA, a server certificate (for 127.0.0.1 / localhost) and client certificates are made here
with the `openssl` command line tool. The node runs with BTT_DICOM_TLS_CERT / KEY / CA, so peers must
present a certificate the CA signed. Senders: pynetdicom with `integrations.dicom.tls.client_context()`
(the helper the SCU uses) and DCMTK storescu / echoscu with `+tls` (Debian's DCMTK has OpenSSL).
"""

from __future__ import annotations

import socket
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from integrations.dicom import tls
from integrations.dicom.models import Instance
from tests.dicom.conftest import DicomNode, run_dcmtk, start_node_process
from tests.dicom.store_support import make_ct, send_file_raw, write_part10
from tests.processes import ProcessLauncher, wait_until

pytestmark = pytest.mark.django_db(transaction=True)


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path  # signed by another CA
    stranger_key: Path
    other_ca: Path


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"openssl {' '.join(args)}: {result.stderr}"


def _ca(folder: Path, name: str, common_name: str) -> None:
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2", "-subj", f"/CN={common_name}",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=folder,
    )  # fmt: skip


def _leaf(folder: Path, ca: str, name: str, common_name: str, extensions: str) -> None:
    (folder / f"{name}.ext").write_text(extensions + "\nbasicConstraints=critical,CA:FALSE\n")
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={common_name}",
        cwd=folder,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
        "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext",
        cwd=folder,
    )  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    _ca(folder, "ca", "BTT test CA")
    _leaf(
        folder,
        "ca",
        "server",
        "btt-node",
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth",
    )
    _leaf(folder, "ca", "client", "MODALITY", "extendedKeyUsage=clientAuth")
    _ca(folder, "other", "Some other CA")
    _leaf(folder, "other", "stranger", "STRANGER", "extendedKeyUsage=clientAuth")
    f = folder
    return Pki(
        f / "ca.crt", f / "server.crt", f / "server.key", f / "client.crt", f / "client.key",
        f / "stranger.crt", f / "stranger.key", f / "other.crt",
    )  # fmt: skip


@pytest.fixture(scope="module")
def node(
    pki: Pki, process_launcher: ProcessLauncher, test_database_env: dict[str, str]
) -> Iterator[DicomNode]:
    started = start_node_process(
        process_launcher,
        test_database_env,
        name="dicom-node-tls",
        BTT_DICOM_TLS_CERT=str(pki.server_cert),
        BTT_DICOM_TLS_KEY=str(pki.server_key),
        BTT_DICOM_TLS_CA=str(pki.ca),
        BTT_DICOM_TIMEOUT="3",
    )
    yield started
    started.stop()


@pytest.fixture
def client_context(pki: Pki, settings) -> ssl.SSLContext:
    """This node's SCU side as the SCU engineer uses it: `tls.client_context()` from settings."""
    settings.BTT_DICOM_TLS_CERT = str(pki.client_cert)
    settings.BTT_DICOM_TLS_KEY = str(pki.client_key)
    settings.BTT_DICOM_TLS_CA = str(pki.ca)
    return tls.client_context()


def test_the_node_says_where_tls_listens(node: DicomNode) -> None:
    assert (
        f"dicom_scp: listening: DICOM TLS BTTHEALTH on 127.0.0.1:{node.tls_port} (client certificates required)"
        in node.log()
    )


def test_echo_and_store_over_tls_with_pynetdicom(
    node: DicomNode, client_context: ssl.SSLContext, tmp_path: Path
) -> None:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(Verification)
    assoc = ae.associate(node.host, node.tls_port, ae_title=node.aet, tls_args=(client_context, "127.0.0.1"))
    assert assoc.is_established
    try:
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()

    path = write_part10(make_ct(), tmp_path / "ct.dcm")
    status = send_file_raw(
        node.host, node.tls_port, path, called_ae=node.aet, tls_args=(client_context, "127.0.0.1")
    )
    assert status.Status == 0x0000
    assert Instance.objects.get().calling_ae == "PYNETDICOM"


def test_store_over_tls_with_dcmtk(node: DicomNode, pki: Pki, tmp_path: Path) -> None:
    path = write_part10(make_ct(), tmp_path / "ct.dcm")
    result = run_dcmtk(
        "storescu", "-v", "+tls", str(pki.client_key), str(pki.client_cert), "+cf", str(pki.ca),
        "-aet", "MODALITY", "-aec", node.aet, node.host, str(node.tls_port), str(path),
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Received Store Response (Success)" in output
    assert Instance.objects.get().calling_ae == "MODALITY"


def test_a_client_without_a_certificate_is_refused(node: DicomNode, pki: Pki) -> None:
    result = run_dcmtk("echoscu", "+tla", "+cf", str(pki.ca), "-aec", node.aet, node.host, str(node.tls_port))
    assert result.returncode != 0
    wait_until(
        lambda: "PEER_DID_NOT_RETURN_A_CERTIFICATE" in node.log(), 5, "the refused handshake to be logged"
    )


def test_a_certificate_from_another_ca_is_refused(node: DicomNode, pki: Pki) -> None:
    result = run_dcmtk(
        "echoscu", "+tls", str(pki.stranger_key), str(pki.stranger_cert), "+cf", str(pki.ca),
        "-aec", node.aet, node.host, str(node.tls_port),
    )  # fmt: skip
    assert result.returncode != 0
    wait_until(lambda: "CERTIFICATE_VERIFY_FAILED" in node.log(), 5, "the refused handshake to be logged")


def test_the_client_verifies_the_node(node: DicomNode, pki: Pki) -> None:
    """An SCU trusting another CA does not talk to the node."""
    result = run_dcmtk(
        "echoscu", "+tls", str(pki.client_key), str(pki.client_cert), "+cf", str(pki.other_ca),
        "-aec", node.aet, node.host, str(node.tls_port),
    )  # fmt: skip
    assert result.returncode != 0


def test_a_silent_tls_client_does_not_block_the_others(
    node: DicomNode, client_context: ssl.SSLContext
) -> None:
    """Connected, no handshake: other TLS clients are served meanwhile; it is dropped after the timeout."""
    with socket.create_connection((node.host, node.tls_port)) as silent:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(Verification)
        assoc = ae.associate(
            node.host, node.tls_port, ae_title=node.aet, tls_args=(client_context, "127.0.0.1")
        )
        assert assoc.is_established
        assoc.release()
        silent.settimeout(30)
        assert silent.recv(1024) == b""
    wait_until(
        lambda: "The handshake operation timed out" in node.log(), 5, "the dropped client to be logged"
    )


def test_the_plain_port_still_works(node: DicomNode) -> None:
    result = run_dcmtk("echoscu", "-aec", node.aet, node.host, str(node.port))
    assert result.returncode == 0, result.stdout + result.stderr


def test_serve_names_the_tls_listener(settings, pki: Pki) -> None:
    from btt_health.supervisor import dicom_child

    settings.BTT_DICOM_HOST = "0.0.0.0"
    settings.BTT_DICOM_PORT = 11112
    settings.BTT_DICOM_TLS_PORT = 2762
    settings.BTT_DICOM_TLS_CERT = str(pki.server_cert)
    settings.BTT_DICOM_TLS_KEY = str(pki.server_key)
    child = dicom_child()
    assert child.name == "dicom"
    assert child.listens_on == "DICOM BTTHEALTH on 0.0.0.0:11112, DICOM TLS on 0.0.0.0:2762"
    assert child.argv[-1] == "dicom_scp"
