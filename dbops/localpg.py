"""Throwaway PostgreSQL clusters from this machine's binaries.

Used by the test suite and by the README's main command when no Docker engine
answers. PostgreSQL refuses to run as root, so as root the server runs as an
unprivileged user (``DBOPS_PG_RUNAS``, default ``postgres``) through ``runuser``.

    python -m dbops.localpg start DIR     # prints POSTGRES_* lines for an env file
    python -m dbops.localpg stop DIR
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from dbops import pgbin


class LocalPgError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _runas_user() -> str | None:
    if os.geteuid() != 0:
        return None
    name = os.environ.get("DBOPS_PG_RUNAS", "postgres")
    try:
        pwd.getpwnam(name)
    except KeyError:
        raise LocalPgError(
            f"running as root, and PostgreSQL refuses root; user {name!r} does not "
            f"exist: create it (useradd -r {name}) or set DBOPS_PG_RUNAS"
        ) from None
    return name


@dataclass
class Cluster:
    root: str
    port: int
    user: str = "dbops"
    password: str = ""
    bindir: str = ""

    @property
    def data(self) -> Path:
        return Path(self.root) / "data"

    @property
    def state_file(self) -> Path:
        return Path(self.root) / "cluster.json"

    def _cmd(self, tool: str, *args: str) -> list[str]:
        argv = [os.path.join(self.bindir, tool), *args]
        runas = _runas_user()
        return ["runuser", "-u", runas, "--", *argv] if runas else argv

    def _run(self, argv: list[str]) -> None:
        done = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise LocalPgError(
                f"{os.path.basename(argv[0]) if argv[0] != 'runuser' else argv[4]} failed: "
                f"{(done.stderr or done.stdout).strip()[-800:]}"
            )

    def init(self) -> None:
        root = Path(self.root)
        root.mkdir(parents=True, exist_ok=True)
        runas = _runas_user()
        if runas:
            uid, gid = pwd.getpwnam(runas).pw_uid, pwd.getpwnam(runas).pw_gid
            os.chown(root, uid, gid)
        pwfile = root / "pw"
        pwfile.write_text(self.password + "\n")
        pwfile.chmod(0o600)
        if runas:
            os.chown(pwfile, uid, gid)
        try:
            self._run(
                self._cmd(
                    "initdb",
                    "-D",
                    str(self.data),
                    "-U",
                    self.user,
                    f"--pwfile={pwfile}",
                    "--auth-host=scram-sha-256",
                    "--auth-local=trust",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                )
            )
        finally:
            pwfile.unlink(missing_ok=True)

    def start(self, *, fast: bool = True) -> None:
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=200"
        if fast:
            opts += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run(
            self._cmd(
                "pg_ctl",
                "-D",
                str(self.data),
                "-l",
                str(Path(self.root) / "log"),
                "-o",
                opts,
                "-w",
                "-t",
                "60",
                "start",
            )
        )
        self.state_file.write_text(json.dumps(asdict(self)))
        self.state_file.chmod(0o600)

    def stop(self, mode: str = "fast") -> None:
        if (self.data / "postmaster.pid").exists():
            subprocess.run(
                self._cmd("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop"),
                capture_output=True,
                stdin=subprocess.DEVNULL,
            )

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def connect(self, dbname: str = "postgres", **kw):
        import psycopg

        kw.setdefault("autocommit", True)
        return psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=dbname,
            **kw,
        )

    def create_database(self, name: str) -> None:
        from psycopg import sql

        with self.connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    def env(self, dbname: str) -> dict[str, str]:
        return {
            "POSTGRES_HOST": "127.0.0.1",
            "POSTGRES_PORT": str(self.port),
            "POSTGRES_USER": self.user,
            "POSTGRES_PASSWORD": self.password,
            "POSTGRES_DB": dbname,
            "DBOPS_PG_BINDIR": self.bindir,
        }


def new_cluster(
    root: str | None = None, *, user: str = "dbops", fast: bool = True, bindir: str | None = None
) -> Cluster:
    """A started cluster from ``bindir`` (default: DBOPS_PG_BINDIR, then pg_config, …)."""
    bindir = bindir or pgbin.bindir()
    if not bindir or not os.path.isfile(os.path.join(bindir, "initdb")):
        raise LocalPgError(
            "no PostgreSQL server binaries found (initdb): install PostgreSQL "
            "(e.g. apt-get install postgresql) or set DBOPS_PG_BINDIR"
        )
    root = root or tempfile.mkdtemp(prefix="dbops-pg-")
    cluster = Cluster(
        root=str(Path(root).resolve()),
        port=free_port(),
        user=user,
        password=secrets.token_urlsafe(18),
        bindir=bindir,
    )
    cluster.init()
    for attempt in range(3):  # the port may be taken between free_port() and bind
        try:
            cluster.start(fast=fast)
            return cluster
        except LocalPgError:
            if attempt == 2:
                raise
            cluster.port = free_port()
    return cluster


def load(root: str) -> Cluster:
    return Cluster(**json.loads((Path(root) / "cluster.json").read_text()))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m dbops.localpg", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("action", choices=["start", "stop"])
    p.add_argument("dir")
    p.add_argument("--database", default="app")
    a = p.parse_args(argv)
    try:
        if a.action == "start":
            if (Path(a.dir) / "cluster.json").exists():
                cluster = load(a.dir)
                cluster.start(fast=False) if not (
                    cluster.data / "postmaster.pid"
                ).exists() else None
            else:
                cluster = new_cluster(a.dir, fast=False)
                cluster.create_database(a.database)
            for k, v in cluster.env(a.database).items():
                print(f"{k}={v}")
        else:
            load(a.dir).destroy()
    except LocalPgError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
