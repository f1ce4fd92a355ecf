"""The SCU over DICOM TLS: a node process with a TLS listener (certificate from a test CA made with
openssl), reached as a RemoteAE with use_tls. The SCU verifies the server with BTT_DICOM_TLS_CA;
an SCU that does not trust the CA gets no association.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from integrations.dicom import scu
from integrations.dicom.models import RemoteAE
from tests.dicom.conftest import DicomNode
from tests.dicom.qr_support import make_image, store, uid

pytestmark = pytest.mark.django_db(transaction=True)


def make_certificates(folder: Path) -> dict[str, Path]:
    """A CA and a server certificate (CN/SAN 127.0.0.1) signed by it, as PEM files."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make the test certificates")
    folder.mkdir(parents=True, exist_ok=True)
    files = {name: folder / f"{name}.pem" for name in ("ca", "ca-key", "server", "server-key")}
    csr = folder / "server.csr"
    ext = folder / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=BTT test CA",
            "-keyout", str(files["ca-key"]), "-out", str(files["ca"]))  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
            "-keyout", str(files["server-key"]), "-out", str(csr))  # fmt: skip
    openssl("x509", "-req", "-in", str(csr), "-CA", str(files["ca"]), "-CAkey", str(files["ca-key"]),
            "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(files["server"]))  # fmt: skip
    return files


def test_scu_echo_find_and_store_over_tls(
    start_dicom_node: Callable[..., DicomNode], settings, tmp_path: Path
) -> None:
    from tests.dicom.qr_support_db import QR_TEST_TASK_QUEUE

    settings.BTT_DICOM_TASK_QUEUE = QR_TEST_TASK_QUEUE
    certificates = make_certificates(tmp_path / "tls")
    node = start_dicom_node(
        BTT_DICOM_TLS_CERT=str(certificates["server"]), BTT_DICOM_TLS_KEY=str(certificates["server-key"])
    )
    assert node.tls_port is not None
    remote = RemoteAE.objects.create(ae_title="TLSNODE", host="127.0.0.1", port=node.tls_port, use_tls=True)
    image = make_image(patient_id="TLS-1", patient_name="Over^Tls", study="tls-study", series="s", instance=1)
    store(image, tmp_path / "stored")

    # Without trusting the test CA, the handshake fails: no association.
    with pytest.raises(scu.AssociationFailed):
        scu.echo(remote)

    settings.BTT_DICOM_TLS_CA = str(certificates["ca"])
    assert scu.echo(remote) == 0x0000
    (match,) = scu.find(remote, "STUDY", {"StudyInstanceUID": uid("tls-study"), "PatientName": ""})
    assert str(match.PatientName) == "Over^Tls"
    result = scu.store(remote, study_uid=uid("tls-study"))  # the node keeps its copy: a duplicate
    assert result.ok, result.as_dict()
    assert "association from BTTHEALTH" in node.log()
