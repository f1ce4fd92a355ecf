"""Instance storage: where the DICOM files of the index live, behind a small interface.

Every stored instance is one DICOM Part 10 file (preamble, File Meta Information, the data set
exactly as received). The index (`models.Instance.storage_key`) names the file by an opaque key;
nothing outside this module builds paths. `get_instance_storage()` returns the configured
backend (`BTT_DICOM_STORAGE`): only `filesystem` today, so that object storage can be added
later as another class with the same methods.

`FileSystemStorage` lays files out under `BTT_DICOM_STORAGE_DIR` (default `$BTT_DATA_DIR/dicom`)
as `ab/<sha256 of the SOP Instance UID>.dcm`: 256 folders (40,000 files each at ten million
instances, which ext4's and XFS's hashed directories handle well), all made before the first
file is stored (`_FOLDERS_MADE` marks it), so that no instance pays for a new folder and its
parent's fsync. Keys of the earlier two-level layout (`ab/cd/<sha256>.dcm`) stay readable. Incoming data is staged in `incoming/` on the same file
system so that storing is a rename:

- `put_file(temp_path, name)` moves the file into place without overwriting anything (a hard
  link, then unlinking the temporary name; a copy across file systems), makes it durable (fsync
  of the file and of its folder, and of folders it created) and returns its key;
  `begin_put(temp_path, name)` does the same but returns before the fsync: the caller `wait()`s
  for it (which runs it in the caller's thread), or `start()`s it in a thread pool first to do
  other work meanwhile (the ingest path's ORM transaction);
- a key that is taken already (the same SOP Instance UID stored before, or a file a crash left
  unindexed) gets a unique suffix instead, so a stored file is never overwritten while the index
  still points at it.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import os
import secrets
import shutil
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO, Protocol

from django.conf import settings


class StorageError(Exception):
    """The instance storage could not do what was asked (disk full, permissions, I/O error)."""


class InstanceStorage(Protocol):
    """What the DICOM node needs from an instance storage backend."""

    def prepare(self) -> None:
        """Make the storage ready to take files (the SCP calls it when it starts, so that the
        first instance does not wait for it); idempotent."""

    def staging_dir(self) -> Path:
        """A local folder for files being received, on the same file system as the store where
        that matters (so `put_file` can rename instead of copy)."""

    def put_file(self, temp_path: Path, name: str) -> str:
        """Store the finished file at `temp_path` durably and return its key.

        `name` (the SOP Instance UID) picks the key; the file is moved (or copied, then removed)
        and is durable when this returns. Raises `StorageError`.
        """

    def begin_put(self, temp_path: Path, name: str) -> PendingPut:
        """Like `put_file`, but returns once the file is in place, with its key; the file is
        durable when the result's `wait()` returns (it raises StorageError like `put_file`);
        `start()` on the result lets that happen in the background meanwhile."""

    def open(self, key: str) -> BinaryIO:
        """The stored file, opened for binary reading. Raises FileNotFoundError."""

    def path(self, key: str) -> Path | None:
        """A local path of the stored file where the backend has one (None otherwise)."""

    def delete(self, key: str) -> None:
        """Remove the stored file; a missing one is not an error."""

    def exists(self, key: str) -> bool:
        """Whether a file is stored under `key`."""

    def size(self, key: str) -> int:
        """Size of the stored file in bytes."""

    def iter_keys(self) -> Iterator[tuple[str, float]]:
        """Every stored file as (key, modification time as a POSIX timestamp), in no order."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_durable(path: Path, folders: list[Path], name: str) -> None:
    """fsync the file, then the folders whose entries name it (or its new parent folders)."""
    try:
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
        for folder in folders:
            _fsync_dir(folder)
    except OSError as exc:
        raise StorageError(f"storing {name} failed: {exc.strerror or exc}") from exc


_pool: ThreadPoolExecutor | None = None


def _sync_pool() -> ThreadPoolExecutor:
    global _pool
    with _storage_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="dicom-fsync")
        return _pool


class PendingPut:
    """A file moved into the storage under `key` whose fsync (of the file and its folders) may
    not have happened yet.

    `wait()` returns once the file is durable: it runs the fsync in the calling thread unless
    `start()` already handed it to a thread pool (to overlap it with other work), in which case
    it waits for that. A thread pool costs two thread handoffs per file; where the caller has
    nothing to overlap (the ingest path's usual case waits right away) it fsyncs itself."""

    def __init__(self, key: str, durable: Callable[[], None] | None = None) -> None:
        self.key = key
        self._durable = durable  # the fsync still to run (None: nothing, or done/started)
        self._future: Future | None = None
        self._error: BaseException | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start the fsync in the background now (idempotent)."""
        with self._lock:
            if self._durable is not None:
                self._future = _sync_pool().submit(self._durable)
                self._durable = None

    def wait(self) -> str:
        """Block until the file is durable; return its key. Raises StorageError (every time,
        once its fsync failed)."""
        with self._lock:
            durable, self._durable = self._durable, None
            if durable is not None:
                try:
                    durable()
                except BaseException as exc:
                    self._error = exc
        if self._future is not None:
            self._future.result()
        if self._error is not None:
            raise self._error
        return self.key

    def settle(self) -> None:
        """Wait for an fsync started in the background, without starting one: for a file to be
        deleted instead of indexed (nothing may rely on its durability afterwards)."""
        with self._lock:
            self._durable = None
        if self._future is not None:
            with contextlib.suppress(Exception):
                self._future.result()


# In the storage folder once all folders of the layout are made.
_FOLDERS_MADE = ".folders-made"


class FileSystemStorage:
    """Instance files in a local (or mounted shared) folder; see the module docstring."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._incoming = self.root / "incoming"
        self._made_dirs: set[Path] = set()
        self._folders_ready = False
        self._lock = threading.Lock()

    # --- keys and paths ---------------------------------------------------------------------

    @staticmethod
    def key_for(name: str) -> str:
        """The preferred key of the instance `name` (its SOP Instance UID): `ab/<sha256>.dcm`."""
        digest = hashlib.sha256(name.encode("ascii", "replace")).hexdigest()
        return f"{digest[:2]}/{digest}.dcm"

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if (
            len(parts) not in (2, 3)
            or any(not p or p in (".", "..") for p in parts)
            or "\\" in key
            or not key.endswith(".dcm")
        ):
            raise ValueError(f"not an instance storage key: {key!r}")
        return self.root.joinpath(*parts)

    def prepare(self) -> None:
        self._make_folders()

    def _make_folders(self) -> None:
        """All 256 folders of the layout, once per storage (`_FOLDERS_MADE`), durably."""
        if self._folders_ready:
            return
        with self._lock:
            marker = self.root / _FOLDERS_MADE
            if not marker.exists():
                self.root.mkdir(parents=True, exist_ok=True)
                for number in range(256):
                    (self.root / f"{number:02x}").mkdir(exist_ok=True)
                _fsync_dir(self.root)
                marker.touch()
                _fsync_dir(self.root)
            self._folders_ready = True

    # --- the interface ----------------------------------------------------------------------

    def staging_dir(self) -> Path:
        if self._incoming not in self._made_dirs:  # once per process, not a syscall per instance
            self._incoming.mkdir(parents=True, exist_ok=True)
            with self._lock:
                self._made_dirs.add(self._incoming)
        return self._incoming

    def put_file(self, temp_path: Path, name: str) -> str:
        return self.begin_put(temp_path, name).wait()

    def begin_put(self, temp_path: Path, name: str) -> PendingPut:
        """Move the file into place now; it is durable once the result's `wait()` returns (its
        `start()` makes it durable in the background meanwhile)."""
        temp_path = Path(temp_path)
        key = self.key_for(name)
        try:
            self._make_folders()
            target = self._path(key)
            changed = []
            if not target.parent.is_dir():  # removed by hand since: made again, durably
                target.parent.mkdir(parents=True, exist_ok=True)
                changed.append(target.parent.parent)
            if not self._place(temp_path, target):  # the preferred key is taken: never overwrite
                key = f"{key[:-4]}.{secrets.token_hex(6)}.dcm"
                target = self._path(key)
                if not self._place(temp_path, target):
                    raise StorageError(f"could not place {temp_path} at {target}: exists")
        except StorageError:
            raise
        except OSError as exc:
            raise StorageError(f"storing {name} failed: {exc.strerror or exc}") from exc
        return PendingPut(key, functools.partial(_make_durable, target, [target.parent, *changed], name))

    def _place(self, source: Path, target: Path) -> bool:
        """Move `source` to `target` unless `target` exists (False then). Atomic on one file system."""
        try:
            os.link(source, target)  # fails with EEXIST instead of overwriting
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EMLINK):
                raise
            return self._copy_place(source, target)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(source)
        return True

    def _copy_place(self, source: Path, target: Path) -> bool:
        """Cross-device (or no hard links): copy next to the target, fsync, rename without clobbering."""
        partial = target.with_name(f".{target.name}.{secrets.token_hex(4)}.partial")
        try:
            with open(source, "rb") as src, open(partial, "xb") as dst:
                shutil.copyfileobj(src, dst, 1024 * 1024)
                dst.flush()
                os.fsync(dst.fileno())
            try:
                os.link(partial, target)
            except FileExistsError:
                return False
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(partial)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(source)
        return True

    def open(self, key: str) -> BinaryIO:
        return open(self._path(key), "rb")

    def path(self, key: str) -> Path | None:
        return self._path(key)

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(key))

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        return self._path(key).stat().st_size

    def iter_keys(self) -> Iterator[tuple[str, float]]:
        if not self.root.is_dir():
            return
        for folder in _subfolders(self.root):
            if folder.name == self._incoming.name:
                continue
            yield from _files(Path(folder.path), folder.name)
            for inner in _subfolders(Path(folder.path)):  # the two-level layout of earlier keys
                yield from _files(Path(inner.path), f"{folder.name}/{inner.name}")


def _subfolders(path: Path) -> list[os.DirEntry]:
    with os.scandir(path) as entries:
        return [entry for entry in entries if entry.is_dir()]


def _files(folder: Path, prefix: str) -> Iterator[tuple[str, float]]:
    """(key, mtime) of the stored files directly in `folder`, whose keys start with `prefix`."""
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_file() and entry.name.endswith(".dcm"):
                with contextlib.suppress(FileNotFoundError):
                    yield f"{prefix}/{entry.name}", entry.stat().st_mtime


_storage: InstanceStorage | None = None
_storage_config: tuple | None = None
_storage_lock = threading.Lock()


def get_instance_storage() -> InstanceStorage:
    """The instance storage chosen by `BTT_DICOM_STORAGE` (one shared instance per process)."""
    global _storage, _storage_config
    config = (settings.BTT_DICOM_STORAGE, str(settings.BTT_DICOM_STORAGE_DIR))
    with _storage_lock:
        if _storage is None or _storage_config != config:  # settings may change in tests
            if settings.BTT_DICOM_STORAGE == "filesystem":
                _storage = FileSystemStorage(Path(settings.BTT_DICOM_STORAGE_DIR))
            else:  # settings.py only lets known backends through
                raise StorageError(f"unknown BTT_DICOM_STORAGE {settings.BTT_DICOM_STORAGE!r}")
            _storage_config = config
        return _storage
