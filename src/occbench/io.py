"""Atomic file output, folder locks and content hashing.

Every artefact of the DAG is written to a temporary file in the same folder and
renamed into place, so an interrupted job never leaves a half-written output
that a later step (or a resumed run) would mistake for a finished one. A verb
holds its output folder's lock while it writes there, so two of them never
write the same folder at once.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

LOCK_FILE = ".occbench.lock"

_UMASK = os.umask(0)
os.umask(_UMASK)


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)  # the file system is full, or the user's quota on it


class DiskFull(OSError):
    """A write that found its file system full (ENOSPC) or its quota spent (EDQUOT), naming what it was
    writing. Pickles as an OSError (errno, message), so a worker process's one reaches the parent whole."""

    def __str__(self) -> str:
        return self.strerror


def disk_full(path: str | os.PathLike, err: OSError) -> DiskFull:
    """The DiskFull of a write of ``path`` that failed with ``err`` (one of NO_SPACE)."""
    why = "no space left on device" if err.errno == errno.ENOSPC else "disk quota exceeded"
    return DiskFull(err.errno, f"{path}: cannot write it: {why} ({errno.errorcode[err.errno]}) on the file "
                               f"system of {Path(path).parent}; no partial file is left: free space there and "
                               "rerun")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    On failure the temporary file is removed; a full file system (ENOSPC, EDQUOT) is raised as DiskFull
    naming ``path``, which the CLI reports as such."""
    path = Path(path)
    tmp_path = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs follow the umask
        yield tmp_path
        os.replace(tmp_path, path)
    except OSError as err:
        if err.errno in NO_SPACE and not isinstance(err, DiskFull):
            raise disk_full(path, err) from err
        raise
    finally:
        if tmp_path is not None:
            tmp_path.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_json(data: Any) -> str:
    """Hash of a JSON-able object, independent of key order."""
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


class FolderLocked(ValueError):
    """Another live occbench process is writing the folder."""


class LockUnsupported(ValueError):
    """The folder's file system refuses POSIX record locks (an NFS mount without its lock manager, some
    FUSE or SMB mounts): without the lock, two verbs could write the folder at once, so none starts."""


# lockf's answers of a file system without (working) POSIX locks: NFS without lockd, FUSE, some SMB mounts
LOCKS_UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, verb: str) -> Iterator[None]:
    """Hold ``folder``'s lock while ``verb`` writes there; refuse when another process holds it.

    The lock is a POSIX record lock (``lockf``) on ``folder``/.occbench.lock, a file naming its holder
    (pid, host, start) for the message. The kernel (or the NFS lock manager) releases it when the holder
    dies, SIGKILL included, so the file a killed job leaves holds nothing and the next verb takes it over.
    The holder must not open the lock file otherwise: closing any descriptor of it drops the lock.
    Folders made for the lock that stay empty (the verb wrote nothing) are removed again.
    """
    folder = Path(folder)
    made = [path for path in (folder, *folder.parents) if not path.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    existed = path.exists()
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = os.read(fd, 4096).decode(errors="replace").strip() or "another process"
            os.close(fd)
            if err.errno in LOCKS_UNSUPPORTED:  # leave the disk as it was: no lock file, no folder made
                if not existed:
                    path.unlink(missing_ok=True)
                _remove_empty(made)
                raise LockUnsupported(
                    f"{folder}: cannot lock {path}: its file system does not support POSIX locks (lockf: "
                    f"{errno.errorcode[err.errno]}, {os.strerror(err.errno)}), so {verb} cannot keep a second "
                    "writer out and does not start: put results/ on a local file system, or on an NFS mount "
                    "whose lock manager runs (rpc.statd, lockd; not mounted with nolock)") from err
            if err.errno not in (errno.EACCES, errno.EAGAIN):
                raise
            raise FolderLocked(f"{folder}: {holder} is writing this folder (lock {path}); a second {verb} of it "
                               "is refused: wait for the first to end") from None
        if path.exists() and path.stat().st_ino == os.fstat(fd).st_ino:
            break
        os.close(fd)  # its holder removed it between our open and lock: lock the new file
    left = os.read(fd, 4096).decode(errors="replace").strip()
    if left:
        print(f"occbench: taking over {path} from {left}, which no longer runs", file=sys.stderr)
    try:
        os.ftruncate(fd, 0)
        try:
            os.pwrite(fd, f"{verb} (pid {os.getpid()} on {socket.gethostname()} since "
                          f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())})\n".encode(), 0)
        except OSError as err:
            raise disk_full(path, err) if err.errno in NO_SPACE else err
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)
        _remove_empty(made)


def _remove_empty(made: list[Path]) -> None:
    """Remove the folders ``made`` (the innermost first); stop at the first one something was written in."""
    for made_folder in made:
        try:
            made_folder.rmdir()
        except OSError:
            break
