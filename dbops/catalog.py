"""The backup folder: names, manifests, listing.

A backup is two files in DBOPS_BACKUP_DIR:
    <db>.<UTC time>.<revision>.<reason>.dump          pg_dump custom format (or .dir.tar:
                                                      a directory-format dump, tarred)
    <db>.<UTC time>.<revision>.<reason>.manifest.json the commit marker, written last
A dump without a valid manifest is not a backup: it is listed as invalid, never restored.
Host side only.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import zlib
from datetime import UTC, datetime
from pathlib import Path

MANIFEST_SUFFIX = ".manifest.json"
DUMP_SUFFIXES = (".dump", ".dir.tar")
MANIFEST_VERSION = 1
REQUIRED_KEYS = (
    "format_version",
    "file",
    "format",
    "sha256",
    "size",
    "database",
    "revisions",
    "server_version",
    "pg_dump_version",
    "started_at",
    "finished_at",
    "reason",
    "tables",
    "verification",
)


class ManifestError(ValueError):
    pass


# --- names -------------------------------------------------------------------
def slug(database: str) -> str:
    """A file-name-safe database name; a short hash keeps distinct names distinct."""
    clean = re.sub(r"[^A-Za-z0-9_-]", "-", database)[:40]
    if clean != database:
        clean += "-" + format(zlib.crc32(database.encode()) & 0xFFFF, "04x")
    return clean


def file_timestamp(when: datetime) -> str:
    """The UTC time in a backup's file name (sortable, no colons)."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H%M%SZ")


def base_name(database: str, when: datetime, revisions: list[str], reason: str) -> str:
    rev = "+".join(r[:12] for r in revisions) if revisions else "base"
    rev = re.sub(r"[^A-Za-z0-9_+-]", "-", rev)[:60]
    return (
        f"{slug(database)}.{file_timestamp(when)}.{rev}"
        f".{re.sub(r'[^A-Za-z0-9_-]', '-', reason)[:30]}"
    )


def partial_pattern(database: str) -> re.Pattern:
    return re.compile(rf"^\.{re.escape(slug(database))}\.\d{{4}}-\d\d-\d\dT\d{{6}}Z\..*\.partial$")


def manifest_path(dump: Path) -> Path:
    name = dump.name
    for suffix in DUMP_SUFFIXES:
        if name.endswith(suffix):
            return dump.with_name(name[: -len(suffix)] + MANIFEST_SUFFIX)
    return dump.with_name(name + MANIFEST_SUFFIX)


# --- files -------------------------------------------------------------------
def ensure_dir(path: Path) -> Path:
    """The backup folder, 0700: created, or checked (owned by this user, not group- or
    world-writable: else refused with the chown/chmod to run; wider read bits are tightened)."""
    from dbops import safefile

    return safefile.folder(path)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, data: dict) -> None:
    """Replace ``path`` through a private 0600 temporary file (O_EXCL|O_NOFOLLOW, a random
    name) and a rename: a symlink planted at a fixed name is never followed."""
    from dbops import safefile

    safefile.write_json(path, data)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# --- manifests ---------------------------------------------------------------
def read_manifest(path: Path) -> dict:
    """The manifest's content, checked for shape; ManifestError says what is wrong."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ManifestError(f"no manifest ({path.name} is missing)") from None
    except (OSError, ValueError) as exc:
        raise ManifestError(f"manifest {path.name} is unreadable: {exc}") from None
    if not isinstance(data, dict):
        raise ManifestError(f"manifest {path.name} is not a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise ManifestError(f"manifest {path.name} lacks {', '.join(missing)}")
    if data["format_version"] != MANIFEST_VERSION:
        raise ManifestError(
            f"manifest {path.name} has format_version {data['format_version']!r}, "
            f"this dbops reads {MANIFEST_VERSION}"
        )
    if not re.fullmatch(r"[0-9a-f]{64}", str(data["sha256"])):
        raise ManifestError(f"manifest {path.name} has no valid sha256")
    if not (data["verification"] or {}).get("ok"):
        raise ManifestError(f"manifest {path.name} records a failed verification")
    return data


def dump_for(manifest_file: Path, manifest: dict) -> Path:
    return manifest_file.with_name(Path(manifest["file"]).name)


ARCHIVE_MAGIC = {".dump": (0, b"PGDMP"), ".dir.tar": (257, b"ustar")}


def archive_looks_right(dump: Path) -> bool:
    """The first bytes of a dump are what pg_dump (custom format) or tar writes: a cheap check
    that a 0-byte or garbage file never counts as a backup, whatever its manifest says."""
    for suffix, (offset, magic) in ARCHIVE_MAGIC.items():
        if dump.name.endswith(suffix):
            try:
                with open(dump, "rb") as f:
                    f.seek(offset)
                    return f.read(len(magic)) == magic
            except OSError:
                return False
    return False


class HashCache:
    """sha256 of backup files, keyed by path and checked against the file's size, mtime and
    inode: a file is hashed again only when it changed. Kept 0600 in DBOPS_CACHE_DIR (a 0700
    folder, dbops/safefile.py); losing it only costs a re-hash."""

    def __init__(self, path: Path | None, *, fill: bool = False):
        self.path, self.fill, self.changed = path, fill, False
        self.data: dict[str, dict] = {}
        if path is not None:
            try:
                self.data = json.loads(path.read_text()).get("files", {})
            except (OSError, ValueError, AttributeError):
                self.data = {}

    @staticmethod
    def _stamp(st: os.stat_result) -> list[int]:
        return [st.st_size, st.st_mtime_ns, st.st_ino]

    def get(self, dump: Path) -> str | None:
        """The cached digest when the file is unchanged; else (``fill``) hash it now."""
        try:
            st = dump.stat()
        except OSError:
            return None
        hit = self.data.get(str(dump))
        if hit and hit.get("stat") == self._stamp(st):
            return hit.get("sha256")
        if not self.fill:
            return None
        digest = sha256_file(dump)
        self.put(dump, digest, st)
        return digest

    def put(self, dump: Path, digest: str, st: os.stat_result | None = None) -> None:
        st = st or dump.stat()
        self.data[str(dump)] = {"stat": self._stamp(st), "sha256": digest}
        self.changed = True

    def save(self) -> str | None:
        """Write the cache if it changed; returns why it could not (never raises)."""
        if self.path is None or not self.changed:
            return None
        from dbops import safefile

        try:
            safefile.folder(self.path.parent)
            live = {k: v for k, v in self.data.items() if Path(k).exists()}
            safefile.write_json(self.path, {"files": live})
        except (OSError, safefile.FolderError) as exc:
            return getattr(exc, "message", None) or str(exc)
        self.changed = False
        return None


def hash_cache(settings, *, fill: bool = False) -> HashCache:
    get = getattr(settings, "get", None)
    folder = get("DBOPS_CACHE_DIR") if get else None
    return HashCache(Path(folder) / "backup-sha256.json" if folder else None, fill=fill)


def check_backup(
    dump: Path, *, full: bool = False, hashes: HashCache | None = None
) -> tuple[dict | None, list[str]]:
    """(manifest, problems) for a dump file: manifest present and well-formed, the file's
    size equal to the manifest's and its first bytes an archive's (always, cheap), its sha256
    the manifest's when known (``hashes``: cached by size/mtime/inode, or hashed when the cache
    fills) and with ``full`` always re-hashed."""
    mpath = manifest_path(dump)
    try:
        manifest = read_manifest(mpath)
    except ManifestError as exc:
        return None, [str(exc)]
    problems = []
    if Path(manifest["file"]).name != dump.name:
        problems.append(f"the manifest describes {manifest['file']}, not {dump.name}")
    try:
        size = dump.stat().st_size
    except FileNotFoundError:
        return manifest, [f"{dump.name} is missing"]
    if size != manifest["size"]:
        problems.append(
            f"size {size} bytes differs from the manifest's {manifest['size']} "
            f"({'truncated' if size < manifest['size'] else 'grown'})"
        )
        return manifest, problems
    if not archive_looks_right(dump):
        problems.append("its first bytes are not a pg_dump archive's (a 0-byte or forged file)")
        return manifest, problems
    if full:
        digest = sha256_file(dump)
        if hashes is not None:
            hashes.put(dump, digest)
    else:
        digest = hashes.get(dump) if hashes is not None else None
    if digest is not None and digest != manifest["sha256"]:
        problems.append(
            f"sha256 {digest[:16]}… differs from the manifest's "
            f"{manifest['sha256'][:16]}… (the file changed after it was written)"
        )
    return manifest, problems


def _entry(path: Path, manifest: dict | None, problems: list[str]) -> dict:
    try:
        st = path.stat()
        size, mtime = st.st_size, st.st_mtime
    except FileNotFoundError:
        size, mtime = 0, 0.0
    m = manifest or {}
    created = m.get("started_at") or datetime.fromtimestamp(mtime, UTC).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )
    return {
        "path": str(path),
        "manifest": manifest,
        "verified": manifest is not None and not problems,
        "problems": problems,
        "created_at": created,
        "database": m.get("database"),
        "revisions": list(m.get("revisions") or []),
        "reason": m.get("reason"),
        "size": size,
        "format": m.get("format"),
        "partial": bool(m.get("partial")),
    }


def list_backups(
    settings,
    *,
    database: str | None = None,
    full: bool = False,
    include_invalid: bool = True,
    hash_missing: bool = False,
) -> list[dict]:
    """Every backup in DBOPS_BACKUP_DIR, newest first: path, manifest, verified, created_at
    (ISO UTC), database, revisions, reason, size, problems. ``verified`` means: a well-formed
    manifest recording a passed full read, the file's size and first bytes matching it, and
    its sha256 too when known (cached by size/mtime/inode; ``hash_missing`` hashes the files
    not cached yet, as ``invoke backups`` does; ``full`` re-hashes every one). Dumps without a
    valid manifest come last-by-time with verified False (``include_invalid``)."""
    folder = Path(settings.backup_dir)
    if not folder.is_dir():
        return []
    entries = []
    hashes = hash_cache(settings, fill=hash_missing)  # a cached sha256 that differs: not verified
    for path in folder.iterdir():
        if path.name.startswith(".") or not path.name.endswith(DUMP_SUFFIXES):
            continue
        manifest, problems = check_backup(path, full=full, hashes=hashes)
        if manifest is None and not include_invalid:
            continue
        entry = _entry(path, manifest, problems)
        if database and entry["database"] not in (database, None):
            continue
        if (
            database
            and entry["database"] is None
            and not path.name.startswith(slug(database) + ".")
        ):
            continue
        if not include_invalid and not entry["verified"]:
            continue
        entries.append(entry)
    for mpath in folder.glob("*" + MANIFEST_SUFFIX):  # a manifest whose dump is gone
        try:
            m = json.loads(mpath.read_text())
            dump = mpath.with_name(Path(m["file"]).name)
        except Exception:
            continue
        if (
            not dump.exists()
            and include_invalid
            and (not database or m.get("database") == database)
        ):
            entries.append(
                {**_entry(mpath, m, [f"{dump.name} is missing"]), "path": str(dump), "size": 0}
            )
    entries.sort(key=lambda e: e["created_at"], reverse=True)
    hashes.save()
    return entries


def newest_verified(settings, database: str, *, partial: bool = False) -> dict | None:
    """The newest verified FULL backup (``partial``: a touched one counts too)."""
    for e in list_backups(settings, database=database, include_invalid=False):
        if partial or not e["partial"]:
            return e
    return None
