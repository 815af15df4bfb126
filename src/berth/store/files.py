"""Private files and directories: what Berth writes in its data directory is readable by its user only.

* :func:`private_dir` makes the data directory ``0700``: created so, or tightened when it already exists
  and is recognisably Berth's (empty, or holding Berth's files); a directory the user chose that holds
  other things is left alone with a warning (Berth's own files in it are still ``0600``).
* :func:`private_file` creates a file ``0600`` (never through a wider mode) or narrows an existing one.
* :func:`write_private_atomic` replaces a file's content atomically and durably (temp file ``0600``,
  fsync, rename, fsync of the directory): a reader sees the old content or the new, never a mix, and the
  old content is unlinked, not left readable in the file.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger("berth.store")

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
# Names Berth keeps in a data directory: finding one there means the directory is Berth's to tighten.
BERTH_NAMES = frozenset({"berth.db", "berth.db-wal", "berth.db-shm", "auth.db", "secrets.key", "secrets.keys",
                         "replicas", "logs", "agents"})
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def private_dir(path: Path) -> Path:
    """Make ``path`` a directory only this user can enter (see the module's docstring); returns it."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            path.mkdir(mode=PRIVATE_DIR_MODE)
        except FileExistsError:  # made meanwhile by another process: judged below like any existing one
            pass
        else:
            os.chmod(path, PRIVATE_DIR_MODE)
            return path
    mode = _mode(path)
    if not mode & 0o077:
        return path
    try:
        names = {p.name for p in path.iterdir()}
    except OSError:
        names = set()
    ours = path.stat().st_uid == os.getuid() if hasattr(os, "getuid") else True
    if ours and (not names or names & BERTH_NAMES):
        os.chmod(path, PRIVATE_DIR_MODE)
        log.info("data directory %s was mode %04o; made it %04o (only its owner may enter it)",
                 path, mode, PRIVATE_DIR_MODE)
    else:
        log.warning("data directory %s is mode %04o (group or others may enter it); Berth keeps its own files "
                    "in it %04o but does not change a directory that holds other things; run `chmod 700 %s` "
                    "or choose a directory of its own", path, mode, PRIVATE_FILE_MODE, path)
    return path


def private_file(path: Path) -> Path:
    """Create ``path`` empty with mode 0600 if it is missing, else narrow it to 0600; returns it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, PRIVATE_FILE_MODE)
    os.close(fd)
    narrow(path)
    return path


def narrow(path: Path) -> None:
    """Narrow an existing file to 0600 (nothing when it is missing; a warning when it is not this user's)."""
    try:
        if _mode(path) != PRIVATE_FILE_MODE:
            os.chmod(path, PRIVATE_FILE_MODE)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("cannot make %s private (mode 0600): %s", path, exc.strerror or exc)


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_private_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` (mode 0600), atomically and durably."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    _fill(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE_MODE), tmp, data)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def create_private_exclusive(path: Path, data: bytes) -> bool:
    """Create ``path`` holding ``data`` (mode 0600, ``O_EXCL``); False when it already exists."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
    except FileExistsError:
        return False
    _fill(fd, path, data)
    fsync_dir(path.parent)
    return True


def _fill(fd: int, path: Path, data: bytes) -> None:
    """Write ``data`` to the new file ``fd`` (mode 0600) durably and close it; on failure remove ``path``."""
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)
