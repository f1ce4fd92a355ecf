"""DICOMweb (PS3.18) for the DICOM node: STOW-RS, QIDO-RS and WADO-RS under `/dicomweb`.

`views.py` does the HTTP work only (bearer auth, scopes, parameters, content negotiation) and
calls the service modules: `stow.py` (store instances through the ingest service), `qido.py`
(search the Patient/Study/Series/Instance index in SQL), `wado.py` (retrieve stored files and
their metadata), `pixels.py` (frames and rendered images) and `multipart.py` (streaming
multipart/related in and out).
"""
