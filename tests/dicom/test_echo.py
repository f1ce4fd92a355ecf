"""C-ECHO with DCMTK's echoscu; the node as `manage.py dicom_scp` and as the `dicom` child of `serve`."""

from __future__ import annotations

import signal
import socket

import pytest

from tests.dicom.conftest import DicomNode, run_dcmtk
from tests.processes import Stack, wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def test_echoscu_gets_success(dicom_node: DicomNode) -> None:
    result = run_dcmtk(
        "echoscu", "-v", "-aet", "MODALITY", "-aec", dicom_node.aet, dicom_node.host, str(dicom_node.port)
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Received Echo Response (Success)" in output
    wait_until(
        lambda: "association from MODALITY (127.0.0.1:" in dicom_node.log(), 5, "the association log line"
    )


def test_echo_with_any_called_ae_title_by_default(dicom_node: DicomNode) -> None:
    """Like most PACS, the node answers whatever called AE title it is addressed by (unless
    BTT_DICOM_CHECK_CALLED_AET is on)."""
    result = run_dcmtk("echoscu", "-aec", "SOMETHINGELSE", dicom_node.host, str(dicom_node.port))
    assert result.returncode == 0, result.stdout + result.stderr


def test_called_ae_title_checked_when_asked(start_dicom_node) -> None:
    node = start_dicom_node(BTT_DICOM_CHECK_CALLED_AET="true")
    wrong = run_dcmtk("echoscu", "-d", "-aec", "SOMETHINGELSE", node.host, str(node.port))
    assert wrong.returncode != 0
    assert "Called AE Title Not Recognized" in wrong.stdout + wrong.stderr
    right = run_dcmtk("echoscu", "-aec", node.aet, node.host, str(node.port))
    assert right.returncode == 0, right.stdout + right.stderr


def test_dicom_scp_stops_cleanly_on_sigterm_and_sigint(start_dicom_node) -> None:
    for signum in (signal.SIGTERM, signal.SIGINT):
        node = start_dicom_node()
        assert run_dcmtk("echoscu", "-aec", node.aet, node.host, str(node.port)).returncode == 0
        node.process.send_signal(signum)
        assert node.process.wait(timeout=20) == 0, node.log()
        assert f"dicom_scp: {signal.Signals(signum).name} received, stopping" in node.log()
        assert "dicom_scp: stopped" in node.log()
        with socket.socket() as sock:
            assert sock.connect_ex((node.host, node.port)) != 0, "the port is closed"


def test_dicom_scp_fails_loudly_when_the_port_is_taken(
    dicom_node: DicomNode, process_launcher, test_database_env
) -> None:
    import sys

    from tests.processes import MANAGE_PY, child_env

    env = child_env(
        test_database_env, {"BTT_DICOM_HOST": "127.0.0.1", "BTT_DICOM_PORT": str(dicom_node.port)}
    )
    process = process_launcher.start(
        "dicom-node-port-taken", [sys.executable, str(MANAGE_PY), "dicom_scp"], env
    )
    assert process.wait(timeout=60) == 1
    assert "dicom_scp: cannot listen:" in process.log()


def test_serve_runs_the_dicom_node(start_serve) -> None:
    stack: Stack = start_serve(BTT_RUN_WORKER="false")
    port = int(stack.env["BTT_DICOM_PORT"])
    match = stack.process.wait_for_log(
        rf"serve: dicom \(pid (\d+)\): DICOM BTTHEALTH on 127\.0\.0\.1:{port}\n", timeout=30
    )
    assert match
    stack.process.wait_for_log(r"dicom_scp: listening: DICOM BTTHEALTH on 127\.0\.0\.1:", timeout=60)
    result = run_dcmtk("echoscu", "-aec", "BTTHEALTH", "127.0.0.1", str(port))
    assert result.returncode == 0, result.stdout + result.stderr

    stack.process.send_signal(signal.SIGTERM)
    assert stack.process.wait() == 0, stack.process.log_tail()
    assert "dicom_scp: stopped" in stack.process.log()
    assert "did not stop within" not in stack.process.log()


def test_serve_without_the_dicom_node_when_told_so(start_serve) -> None:
    stack: Stack = start_serve(BTT_RUN_WORKER="false", BTT_RUN_DICOM="false")
    assert "serve: http (pid" in stack.process.log()
    assert "serve: dicom" not in stack.process.log()
