"""Hostile file systems (issue 19 item 1): a read-only and a full backup volume (small tmpfs
mounts: tests run as root, where chmod does not stop a write), a world-writable folder, a
folder of another user, a symlink planted at a name dbops writes — for backup and doctor."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest

from dbops import safefile
from dbops.config import load_settings
from dbops.ops import backup as backup_op
from tests.conftest import ROOT


@contextlib.contextmanager
def tmpfs(path: Path, options: str):
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)])
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def full(path: Path) -> None:
    with contextlib.suppress(OSError), open(path / "filler", "wb") as f:
        while True:
            f.write(b"\0" * 65536)


def listing(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


# --- the module ------------------------------------------------------------------------
def test_a_world_writable_folder_is_refused_with_the_chmod_to_run(tmp_path):
    folder = tmp_path / "back ups"
    folder.mkdir(mode=0o700)
    folder.chmod(0o777)
    with pytest.raises(safefile.FolderError) as err:
        safefile.folder(folder)
    assert err.value.kind == "unsafe" and "writable by group and others" in err.value.message
    assert err.value.next_command.startswith(f"chmod 700 {shlex.quote(str(folder))} ")
    folder.chmod(0o770)
    with pytest.raises(safefile.FolderError, match="writable by its group"):
        safefile.folder(folder)


def test_a_folder_of_another_user_is_refused_with_the_chown_to_run(tmp_path):
    folder = tmp_path / "theirs"
    folder.mkdir(mode=0o700)
    os.chown(folder, 65534, 65534)  # nobody
    with pytest.raises(safefile.FolderError) as err:
        safefile.folder(folder)
    assert err.value.kind == "unsafe" and err.value.next_command.startswith("chown ")


def test_wider_read_bits_are_tightened_and_a_new_folder_is_0700(tmp_path):
    readable = tmp_path / "r"
    readable.mkdir(mode=0o755)
    readable.chmod(0o755)
    assert safefile.folder(readable).stat().st_mode & 0o777 == 0o700
    assert safefile.folder(tmp_path / "a" / "b").stat().st_mode & 0o777 == 0o700


def test_a_planted_symlink_is_replaced_never_followed(tmp_path):
    folder = safefile.folder(tmp_path / "f")
    victim = tmp_path / "victim"
    victim.write_text("root's file\n")
    for name in ("state.json", ".state.json.partial"):
        (folder / name).symlink_to(victim)
    safefile.write_json(folder / "state.json", {"a": 1})
    assert victim.read_text() == "root's file\n"
    assert not (folder / "state.json").is_symlink()
    assert (folder / "state.json").stat().st_mode & 0o777 == 0o600
    assert json.loads((folder / "state.json").read_text()) == {"a": 1}
    (folder / "audit.jsonl").symlink_to(victim)
    with pytest.raises(OSError):
        safefile.append(folder / "audit.jsonl", "x\n")  # O_NOFOLLOW
    assert victim.read_text() == "root's file\n"


def test_read_only_and_full_are_told_apart(tmp_path):
    with tmpfs(tmp_path / "ro", "ro,mode=0700,size=1m") as ro:
        with pytest.raises(safefile.FolderError) as err:
            safefile.writable(ro)
        assert err.value.kind == "read_only" and "findmnt -T" in err.value.next_command
        assert safefile.problem(ro).kind == "read_only"
    with tmpfs(tmp_path / "full", "mode=0700,size=256k") as vol:
        full(vol)
        with pytest.raises(safefile.FolderError) as err:
            safefile.writable(vol)
        assert err.value.kind == "full" and err.value.next_command.startswith("df -h ")
        assert listing(vol) == ["filler"]  # the probe is gone
        assert safefile.problem(vol).kind == "full"


# --- backup and doctor -----------------------------------------------------------------
@pytest.mark.parametrize("case", ["read_only", "full", "unsafe"])
def test_backup_refuses_an_unfit_folder_before_any_lock_or_snapshot(ops_env, tmp_path, case):
    folder = tmp_path / "vol"
    with contextlib.ExitStack() as stack:
        if case == "read_only":
            stack.enter_context(tmpfs(folder, "ro,mode=0700,size=1m"))
        elif case == "full":
            full(stack.enter_context(tmpfs(folder, "mode=0700,size=256k")))
        else:
            folder.mkdir()
            folder.chmod(0o777)
        before = listing(folder)
        s = load_settings(ROOT, environ={**ops_env, "DBOPS_BACKUP_DIR": str(folder)})
        with pytest.raises(safefile.FolderError) as err:
            backup_op.backup(s)
        assert err.value.kind == case and err.value.state == "nothing was touched"
        assert listing(folder) == before


def test_invoke_backup_on_a_read_only_volume_is_one_error_and_the_next_command(invoke, tmp_path):
    with tmpfs(tmp_path / "ro vol", "ro,mode=0700,size=1m") as ro:
        done = invoke("backup", env={"DBOPS_BACKUP_DIR": str(ro)})
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("error: ") and "read-only" in done.stderr
    assert f"next: findmnt -T {shlex.quote(str(ro))}" in done.stderr
    assert "not enough free space" not in done.stderr


@pytest.mark.parametrize("case", ["read_only", "full", "world_writable"])
def test_doctor_writes_nothing_into_the_backup_folder_and_still_reports(invoke, tmp_path, case):
    folder = tmp_path / "vol"
    victim = tmp_path / "victim"
    victim.write_text("root's file\n")
    cache = tmp_path / "cache"
    with contextlib.ExitStack() as stack:
        if case == "read_only":
            stack.enter_context(tmpfs(folder, "ro,mode=0700,size=1m"))
        elif case == "full":
            full(stack.enter_context(tmpfs(folder, "mode=0700,size=256k")))
        else:
            folder.mkdir()
            folder.chmod(0o777)  # once world-writable: a local user planted symlinks
            for name in (".dbops-doctor.json", "..dbops-doctor.json.partial", "audit.jsonl"):
                (folder / name).symlink_to(victim)
        before = listing(folder)
        done = invoke(
            "doctor",
            "--no-schema",
            "--json",
            env={"DBOPS_BACKUP_DIR": str(folder), "DBOPS_CACHE_DIR": str(cache)},
        )
        assert listing(folder) == before
    assert "Traceback" not in done.stderr, done.stderr
    report = json.loads(done.stdout)
    [check] = [c for c in report["checks"] if c["name"] == "backups"]
    kind = "unsafe" if case == "world_writable" else case
    assert check["status"] == "fail" and check["folder_problem"] == kind, check
    assert victim.read_text() == "root's file\n"
    assert [p.name for p in cache.iterdir()] and all(
        p.stat().st_mode & 0o777 == 0o600 for p in cache.iterdir()
    )
