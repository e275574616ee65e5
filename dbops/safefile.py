"""Files dbops writes on this host, written safely (issue 19 item 1).

- ``folder(path)``: the folder is created 0700, or checked when it exists: owned by the user
  dbops runs as, not writable by group or others (another local user could plant a symlink
  there and have root's next write land on its target), else a ``FolderError`` with the exact
  ``chown``/``chmod`` to run. Wider *read* bits are tightened to 0700 silently.
- ``writable(path)``: a read-only folder and a full one are told apart — before any lock or
  snapshot — by the mount's flags, ``os.access`` and a probe file; each has its own next command.
- ``write_atomic(path, data)``: a private temporary file (``mkstemp``: ``O_EXCL|O_NOFOLLOW``,
  0600, a random name) in the same folder, fsync, renamed over ``path``, folder fsynced. A symlink
  planted at ``path`` is replaced, never followed.
- ``append(path, data)``: ``O_APPEND|O_NOFOLLOW``, created 0600 (the audit record, logs).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shlex
import tempfile
from pathlib import Path

from dbops.errors import OpsError


class FolderError(OpsError):
    """A folder dbops will not write into (unsafe owner or mode, read-only, full)."""

    def __init__(self, message: str, *, kind: str, next_command: str):
        super().__init__(message, state="nothing was touched", next_command=next_command)
        self.kind = kind


def _q(path: Path) -> str:
    return shlex.quote(str(path))


def _user(uid: int) -> str:
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (KeyError, ImportError):
        return str(uid)


def folder(path: Path, *, create: bool = True) -> Path:
    """``path`` as a folder dbops may write into: created 0700 if missing (with its parents),
    else checked (owner, not group/world-writable); refused with the command that fixes it."""
    path = Path(path)
    if create and not path.exists():
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise _unwritable(path, exc, creating=True) from None
    st = path.stat()  # the folder itself may be a symlink to a volume: its target is checked
    if not os.path.isdir(path):
        raise FolderError(
            f"{path} is not a folder",
            kind="not_a_folder",
            next_command=f"ls -ld {_q(path)}   # point the setting at a folder",
        )
    euid = os.geteuid()
    if st.st_uid != euid:
        raise FolderError(
            f"{path} belongs to {_user(st.st_uid)}, not to {_user(euid)} who runs dbops: "
            "another user's folder could hold files planted for dbops to overwrite",
            kind="unsafe",
            next_command=f"chown {_user(euid)} {_q(path)} && chmod 700 {_q(path)}",
        )
    if st.st_mode & 0o022:
        raise FolderError(
            f"{path} is writable by {'group and others' if st.st_mode & 0o002 else 'its group'} "
            f"(mode {st.st_mode & 0o7777:o}): another local user could plant a file or symlink "
            "there; check what is in it, then",
            kind="unsafe",
            next_command=f"chmod 700 {_q(path)} && ls -la {_q(path)}",
        )
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def writable(path: Path) -> Path:
    """``path`` (a folder checked by ``folder``) can take a new file: a read-only one and a full
    one are refused, each with its own next command. A probe file is created and removed."""
    try:
        ro = bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        ro = False
    if ro or not os.access(path, os.W_OK):
        raise _unwritable(path, OSError(errno.EROFS if ro else errno.EACCES, "read-only"))
    try:
        fd, probe = tempfile.mkstemp(dir=path, prefix=".dbops-probe.", suffix=".partial")
        try:
            os.write(fd, b"\0" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        raise _unwritable(path, exc) from None
    return path


def problem(path: Path, min_free: int = 0) -> FolderError | None:
    """What would stop a write into ``path``, found WITHOUT writing anything (doctor): missing
    is fine (it is created 0700), else unsafe owner/mode, read-only, or fewer than
    ``min_free`` bytes free."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        st = path.stat()
        euid = os.geteuid()
        if not os.path.isdir(path):
            return FolderError(
                f"{path} is not a folder", kind="not_a_folder", next_command=f"ls -ld {_q(path)}"
            )
        if st.st_uid != euid or st.st_mode & 0o022:
            try:
                folder(path, create=False)
            except FolderError as exc:
                return exc
        vfs = os.statvfs(path)
        if vfs.f_flag & os.ST_RDONLY or not os.access(path, os.W_OK):
            return _unwritable(path, OSError(errno.EROFS, "read-only"))
        if vfs.f_bavail * vfs.f_frsize <= min_free:
            return _unwritable(path, OSError(errno.ENOSPC, "no space left"))
    except OSError as exc:
        return _unwritable(path, exc)
    return None


def _unwritable(path: Path, exc: OSError, *, creating: bool = False) -> FolderError:
    what = "cannot be created" if creating else "cannot be written"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return FolderError(
            f"{path} {what}: the volume is full ({exc.strerror})",
            kind="full",
            next_command=f"df -h {_q(path)}   # free space (invoke backups lists old ones)",
        )
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return FolderError(
            f"{path} {what}: it is read-only for {_user(os.geteuid())} ({exc.strerror})",
            kind="read_only",
            next_command=f"findmnt -T {_q(path)}   # remount it read-write or set DBOPS_BACKUP_DIR "
            "to a writable folder, then re-run",
        )
    return FolderError(
        f"{path} {what}: {exc.strerror or exc}",
        kind="unwritable",
        next_command=f"ls -ld {_q(path)}",
    )


def write_atomic(path: Path, data: bytes | str) -> Path:
    """Replace ``path`` with ``data`` through a private 0600 temporary file and a rename."""
    path = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        try:
            os.write(fd, payload)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return path


def write_json(path: Path, data: dict) -> Path:
    return write_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def append(path: Path, data: bytes | str) -> None:
    """Append to ``path`` (created 0600), never through a symlink."""
    payload = data.encode() if isinstance(data, str) else data
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, payload)
        os.fsync(fd)
    finally:
        os.close(fd)
