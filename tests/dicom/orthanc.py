"""A real Orthanc PACS for the tests: its own process, configuration, ports and storage.

`start_orthanc(launcher, folder, modalities=...)` writes a JSON configuration into `folder`
(storage and index there, a free DICOM port and HTTP port on 127.0.0.1, AE title `ORTHANC`, no
authentication, every DICOM operation allowed from any AE, no plugins) and runs
`/usr/sbin/Orthanc <config>` through the tests' ProcessLauncher (log under pytest's temp folder);
it returns an `Orthanc` once its REST API answers. The system service of the Debian package is
never used. Stop it with `.stop()`.

The REST calls the tests need are methods: `upload(path)` (POST /instances), `add_modality`
(PUT /modalities/<name>), `store_to(modality, ids)` (Orthanc's own C-STORE SCU),
`find(level, query)` (/tools/find), `instances()`, `instance_file(id)`, `tags(id)`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.processes import ManagedProcess, ProcessLauncher, free_port

ORTHANC_BINARY = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
ORTHANC_AET = "ORTHANC"


class Orthanc:
    """A running Orthanc: its ports, AE title, process and REST helpers."""

    def __init__(self, process: ManagedProcess, aet: str, dicom_port: int, http_port: int) -> None:
        self.process = process
        self.aet = aet
        self.host = "127.0.0.1"
        self.dicom_port = dicom_port
        self.http_port = http_port
        self.base_url = f"http://127.0.0.1:{http_port}"
        self.session = requests.Session()

    # --- REST ----------------------------------------------------------------------------------

    def _check(self, response: requests.Response) -> Any:
        if response.status_code >= 400:
            pytest.fail(
                f"Orthanc {response.request.method} {response.url} answered {response.status_code}: "
                f"{response.text[:500]}\n--- Orthanc log ---\n{self.process.log_tail()}"
            )
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            return response.content

    def get(self, path: str, **kwargs: Any) -> Any:
        return self._check(self.session.get(self.base_url + path, timeout=60, **kwargs))

    def post(self, path: str, body: Any = None, **kwargs: Any) -> Any:
        if body is not None and not isinstance(body, bytes | str):
            body = json.dumps(body)
        return self._check(self.session.post(self.base_url + path, data=body, timeout=120, **kwargs))

    def put(self, path: str, body: Any) -> Any:
        return self._check(self.session.put(self.base_url + path, data=json.dumps(body), timeout=60))

    def delete(self, path: str) -> Any:
        return self._check(self.session.delete(self.base_url + path, timeout=60))

    def upload(self, path: Path) -> dict:
        """Upload a DICOM file (POST /instances); Orthanc's answer (ID, ParentStudy, Status...)."""
        return self.post("/instances", path.read_bytes(), headers={"Content-Type": "application/dicom"})

    def add_modality(self, name: str, aet: str, host: str, port: int) -> None:
        """Make a DICOM peer known to Orthanc (for C-STORE from it and as a C-MOVE destination)."""
        self.put(
            f"/modalities/{name}",
            {
                "AET": aet,
                "Host": host,
                "Port": port,
                "AllowEcho": True,
                "AllowFind": True,
                "AllowMove": True,
                "AllowGet": True,
                "AllowStore": True,
            },
        )

    def store_to(self, modality: str, resources: list[str]) -> dict:
        """Orthanc sends the resources (Orthanc ids of studies, series, instances) to `modality`
        with its own C-STORE SCU; waits for the job to finish."""
        return self.post(f"/modalities/{modality}/store", {"Resources": resources, "Synchronous": True})

    def echo(self, modality: str) -> None:
        self.post(f"/modalities/{modality}/echo", {})

    def find(self, level: str, query: dict[str, str], expand: bool = True) -> list:
        """/tools/find: Orthanc's own index search (Level: Patient, Study, Series, Instance)."""
        return self.post("/tools/find", {"Level": level, "Query": query, "Expand": expand})

    def instances(self) -> list[str]:
        return self.get("/instances")

    def instance_file(self, orthanc_id: str) -> bytes:
        return self.get(f"/instances/{orthanc_id}/file")

    def tags(self, orthanc_id: str) -> dict:
        return self.get(f"/instances/{orthanc_id}/simplified-tags")

    def metadata(self, orthanc_id: str, name: str) -> str:
        response = self.session.get(f"{self.base_url}/instances/{orthanc_id}/metadata/{name}", timeout=30)
        return response.text if response.status_code == 200 else ""

    def clear(self) -> None:
        """Delete every patient (and so everything) Orthanc stores."""
        for patient in self.get("/patients"):
            self.delete(f"/patients/{patient}")

    def stop(self) -> None:
        self.process.stop()


def start_orthanc(
    launcher: ProcessLauncher,
    folder: Path,
    *,
    aet: str = ORTHANC_AET,
    modalities: dict[str, tuple[str, str, int]] | None = None,
) -> Orthanc:
    """Start an Orthanc of its own in `folder` (see the module docstring); ready when returned.

    `modalities` maps a name to (AE title, host, port): the DICOM peers it knows from the start.
    """
    if not Path(ORTHANC_BINARY).exists():
        pytest.fail(
            f"Orthanc is not installed ({ORTHANC_BINARY}); scripts/test.sh installs the orthanc package"
        )
    dicom_port, http_port = free_port(), free_port()
    while http_port == dicom_port:
        http_port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "Name": f"btt-test-{aet}",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "index"),
        "StorageCompression": False,
        "Plugins": [],
        "HttpServerEnabled": True,
        "HttpPort": http_port,
        "RemoteAccessAllowed": True,
        "AuthenticationEnabled": False,
        "SslEnabled": False,
        "DicomServerEnabled": True,
        "DicomAet": aet,
        "DicomPort": dicom_port,
        "DicomCheckCalledAet": False,
        "DicomCheckModalityHost": False,
        "DicomAlwaysAllowEcho": True,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowFind": True,
        "DicomAlwaysAllowFindWorklist": True,
        "DicomAlwaysAllowGet": True,
        "DicomAlwaysAllowMove": True,
        "DicomModalities": {name: list(peer) for name, peer in (modalities or {}).items()},
        "DicomModalitiesInDatabase": False,
        "DicomScuTimeout": 30,
        "DicomAssociationCloseDelay": 0,
        "OverwriteInstances": True,
        "StableAge": 2,
        "SaveJobs": False,
        "JobsHistorySize": 10,
        "ConcurrentJobs": 2,
        "HttpTimeout": 60,
        "KeepAlive": True,
        "LimitFindResults": 0,
        "LimitFindInstances": 0,
        "StorageAccessOnFind": "Always",
    }
    config_path = folder / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2))
    process = launcher.start(f"orthanc-{aet.lower()}", [ORTHANC_BINARY, "--no-jobs", str(config_path)], {})
    orthanc = Orthanc(process, aet, dicom_port, http_port)
    process.wait_for_http(f"{orthanc.base_url}/system")
    return orthanc
