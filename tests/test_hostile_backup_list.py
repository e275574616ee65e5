"""`invoke backups` verifies what it lists (issue 19 item 7): `yes` only for a file whose size,
first bytes and sha256 match its manifest — a forged 0-byte or garbage file with a matching
manifest, or a file changed after it was written, is NO. The sha256 is cached by size, mtime
and inode in a 0600 file in a 0700 folder (the backup seeds it: listing does not re-hash)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from dbops import catalog


def _listed(invoke, env) -> dict[str, dict]:
    done = invoke("backups", "--json", env=env)
    assert done.returncode == 0, done.stderr
    return {Path(e["path"]).name: e for e in json.loads(done.stdout)}


def _forge(real: Path, name: str, content: bytes) -> Path:
    """A dump named ``name`` with ``content`` and a manifest that matches it in every field
    dbops can check without reading the archive (file, size, sha256)."""
    forged = real.with_name(name)
    forged.write_bytes(content)
    manifest = json.loads(catalog.manifest_path(real).read_text())
    manifest.update(file=forged.name, size=len(content), sha256=hashlib.sha256(content).hexdigest())
    catalog.manifest_path(forged).write_text(json.dumps(manifest))
    return forged


def test_backups_lists_yes_only_for_files_that_match_their_manifest(invoke, settings, tmp_path):
    cache = tmp_path / "cache"
    env = {"DBOPS_CACHE_DIR": str(cache)}
    assert invoke("backup", env=env).returncode == 0
    [real] = sorted(Path(settings.backup_dir).glob("*.dump"))
    seeded = json.loads((cache / "backup-sha256.json").read_text())["files"]
    assert (
        seeded[str(real)]["sha256"] == catalog.read_manifest(catalog.manifest_path(real))["sha256"]
    )  # the backup seeded the cache: listing it costs a stat
    stem = real.name.split(".", 1)[1]
    empty = _forge(real, f"{settings.database}.0{stem}", b"")
    garbage = _forge(real, f"{settings.database}.1{stem}", os.urandom(4096))
    rows = _listed(invoke, env)
    assert rows[real.name]["verified"], rows[real.name]
    for forged in (empty, garbage):
        assert not rows[forged.name]["verified"]
        assert "not a pg_dump archive" in rows[forged.name]["problems"][0]
    text = invoke("backups", env=env).stdout
    line = next(ln for ln in text.splitlines() if ln.endswith(str(empty)))
    assert " NO " in line, line

    # changed after it was written (same size): the stat no longer matches the cache, the
    # listing re-hashes it and says NO
    data = bytearray(real.read_bytes())
    data[len(data) // 2] ^= 0xFF
    real.write_bytes(bytes(data))
    rows = _listed(invoke, env)
    assert not rows[real.name]["verified"]
    assert "differs from the manifest's" in rows[real.name]["problems"][0]
    assert (cache / "backup-sha256.json").stat().st_mode & 0o777 == 0o600
    assert cache.stat().st_mode & 0o777 == 0o700


def test_the_cheap_listing_used_by_other_tasks_uses_the_cache_and_never_hashes(
    invoke, settings, tmp_path, monkeypatch
):
    cache = tmp_path / "cache"
    assert invoke("backup", env={"DBOPS_CACHE_DIR": str(cache)}).returncode == 0
    monkeypatch.setitem(settings.raw, "DBOPS_CACHE_DIR", str(cache))
    hashed = []
    monkeypatch.setattr(catalog, "sha256_file", lambda p, **k: hashed.append(p) or "x")
    [entry] = catalog.list_backups(settings, database=settings.database)
    assert entry["verified"] and hashed == []  # the cached digest answered
