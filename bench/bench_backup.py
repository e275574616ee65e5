"""Benchmark: invoke backup / restore against raw pg_dump / pg_restore. Not a timed test.

    .venv/bin/python bench/bench_backup.py [--gb 1.0 | --pgbench 70] [--runs 3] [--keep DIR]
        [--sweep] [--only 1,4,5] [--empty]

Builds (or reuses, with --keep) a throwaway cluster holding a >= 1 GB database of four
tables of md5 text (compresses ~2x, unlike pgbench's blank filler), or with --pgbench S
`pgbench -i -s S` (70 ~ 1 GB; compresses ~50x: a stream/overhead ratio, not a compression
one), then times, side by side, alternating the order each round, and reports medians:
  1. (P1a) invoke backup (full verification) vs raw pg_dump, same format and compression (<= 1.05)
  2. invoke backup (defaults)           vs naive pg_dump -Fc: speed (>= 1.8x), bytes (<= +10%)
  3. invoke backup --jobs 2             vs naive pg_dump -Fc                          (>= 1.7x)
  4. (P3) invoke restore                vs raw pg_restore into an empty database       (<= 1.15)
  5. invoke restore --pre-backup        (the old default) beside them, for the record
--empty also times invoke backup of an empty database (the fixed cost) against raw pg_dump.
--sweep also times pg_dump -Fc at -Z 0/1/3/6 once (how the default compression was chosen).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import harness  # noqa: E402  (bench/, beside this script)

from dbops import localpg  # noqa: E402

DB = "bench"
TABLES = 4


def build(cluster: localpg.Cluster, gb: float) -> int:
    cluster.create_database(DB)
    rows = int(gb * 1e9 / TABLES / 168) + 1  # ~168 bytes per row on disk, heap + PK

    def one(i: int) -> None:
        with cluster.connect(DB) as conn:
            conn.execute(
                f"CREATE TABLE t{i} (id bigint PRIMARY KEY, a text, b text, n int, at timestamptz)"
            )
            conn.execute(
                f"INSERT INTO t{i} SELECT g, md5(g::text) || md5((g + {i})::text), "
                f"md5(random()::text), (random() * 1e6)::int, now() - g * interval '1 s' "
                f"FROM generate_series(1, %s) g",
                [rows],
            )
            conn.execute(f"VACUUM ANALYZE t{i}")

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(one, range(TABLES)))
    with cluster.connect(DB) as conn:
        return conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]


def build_pgbench(cluster: localpg.Cluster, scale: int) -> int:
    cluster.create_database(DB)
    env = {
        **os.environ,
        "PGHOST": "127.0.0.1",
        "PGPORT": str(cluster.port),
        "PGUSER": cluster.user,
        "PGPASSWORD": cluster.password,
    }
    subprocess.run(
        [str(Path(cluster.bindir) / "pgbench"), "-i", "-q", "-s", str(scale), DB],
        env=env,
        check=True,
        capture_output=True,
    )
    with cluster.connect(DB) as conn:
        conn.execute("VACUUM ANALYZE")
        conn.execute("CHECKPOINT")  # not during the first timed run
        return conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]


class Bench:
    def __init__(self, cluster: localpg.Cluster, out: Path):
        self.cluster, self.out = cluster, out
        self.backups = out / "backups"
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("POSTGRES_", "DBOPS_", "PG", "DATABASE_URL"))
        }
        self.env.update(cluster.env(DB))
        self.env.update(
            {
                "DBOPS_TARGET": "local",
                "DBOPS_ENV_FILE": str(out / "no.env"),
                "DBOPS_BACKUP_DIR": str(self.backups),
                "DBOPS_BACKUP_RETENTION": "off",
                "DBOPS_ALEMBIC_INI": str(ROOT / "backend" / "alembic.ini"),
                "DBOPS_QUIET": "1",
            }
        )
        self.pgenv = {
            **self.env,
            "PGHOST": "127.0.0.1",
            "PGPORT": str(cluster.port),
            "PGUSER": cluster.user,
            "PGPASSWORD": cluster.password,
            "PGDATABASE": DB,
            "PATH": f"{cluster.bindir}:{os.environ['PATH']}",
        }

    def run(self, argv: list[str], env: dict | None = None) -> float:
        t = time.monotonic()
        done = subprocess.run(
            argv,
            env=env or self.pgenv,
            cwd=ROOT,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        took = time.monotonic() - t
        if done.returncode != 0:
            raise SystemExit(f"failed: {argv[:4]}…\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        return took

    def invoke(self, *args: str) -> float:
        return self.run([sys.executable, "-m", "invoke", *args], env=self.env)

    def clear_backups(self) -> None:
        shutil.rmtree(self.backups, ignore_errors=True)

    def newest_backup(self) -> dict:
        manifests = sorted(self.backups.glob("*.manifest.json"))
        return json.loads(manifests[-1].read_text())

    def drop(self, like: str) -> None:
        with self.cluster.connect() as conn:
            for (name,) in conn.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE %s", [like]
            ).fetchall():
                conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')

    # --- the variants: each returns (seconds, bytes) ----------------------------------
    def inv_backup(self) -> tuple[float, int]:
        self.clear_backups()
        took = self.invoke("backup", "--no-retention")
        return took, self.newest_backup()["size"]

    def inv_backup_jobs2(self) -> tuple[float, int]:
        self.clear_backups()
        took = self.invoke("backup", "--no-retention", "--jobs", "2")
        return took, self.newest_backup()["size"]

    def raw_dump(self, *opts: str) -> tuple[float, int]:
        f = self.out / "raw.dump"
        f.unlink(missing_ok=True)
        took = self.run(["pg_dump", "-Fc", *opts, "-f", str(f)])
        size = f.stat().st_size
        return took, size

    def raw_restore(self, dump: Path) -> tuple[float, int]:
        self.drop("bench_raw")
        self.run(["createdb", "bench_raw"])
        took = self.run(["pg_restore", "--exit-on-error", "-d", "bench_raw", str(dump)])
        self.drop("bench_raw")
        return took, dump.stat().st_size

    def inv_restore(self, dump: Path, *opts: str) -> tuple[float, int]:
        took = self.invoke("restore", str(dump), "--yes", *opts)
        self.drop(f"{DB}_dbops_old_%")
        for p in self.backups.glob("*pre-restore*"):
            p.unlink()
        return took, dump.stat().st_size

    def empty_backup(self) -> tuple[float, int]:
        self.clear_backups()
        took = self.run(
            [sys.executable, "-m", "invoke", "backup", "--no-retention"],
            env={**self.env, "POSTGRES_DB": "bench_empty"},
        )
        return took, 0

    def empty_raw(self) -> tuple[float, int]:
        return self.run(
            ["pg_dump", "-Fc", "-Z", "1", "-d", "bench_empty", "-f", str(self.out / "e.dump")]
        ), 0


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def main() -> int:
    p = harness.parser(__doc__, gb=1.0)
    p.add_argument("--pgbench", type=int, metavar="SCALE", help="pgbench -i -s SCALE data instead")
    p.add_argument("--empty", action="store_true", help="also time a backup of an empty database")
    p.add_argument("--sweep", action="store_true", help="also time pg_dump -Fc at -Z 0/1/3/6")
    p.add_argument("--only", help="comma list of comparisons to run: 1,2,3,4,5")
    a = p.parse_args()
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    with harness.cluster(a.keep) as (cluster, reused):
        if reused:
            size = harness.database_size(cluster, DB)
            print(f"reusing {a.keep}: database {size / 1e9:.2f} GB")
        else:
            t = time.monotonic()
            size = build_pgbench(cluster, a.pgbench) if a.pgbench else build(cluster, a.gb)
            what = f"pgbench -s {a.pgbench}" if a.pgbench else f"{TABLES} tables of md5 text"
            print(f"built {size / 1e9:.2f} GB ({what}) in {time.monotonic() - t:.0f} s")
        compare(cluster, a, out)
    return 0


def compare(cluster: localpg.Cluster, a: argparse.Namespace, out: Path) -> None:
    if a.empty:
        with cluster.connect() as conn:
            if not conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = 'bench_empty'"
            ).fetchone():
                conn.execute("CREATE DATABASE bench_empty")
    b = Bench(cluster, out)
    only = set((a.only or "1,2,3,4,5").split(","))
    if a.sweep:
        for z in ("0", "1", "3", "6"):
            took, size_b = b.raw_dump("-Z", z)
            print(f"sweep: pg_dump -Fc -Z{z}: {took:6.1f} s  {size_b / 1e6:7.0f} MB")
        took, size_b = b.raw_dump()
        print(f"sweep: pg_dump -Fc (default): {took:6.1f} s  {size_b / 1e6:7.0f} MB")
    variants: dict[str, callable] = {}
    if only & {"1", "2"}:
        variants["invoke backup"] = b.inv_backup
    if "1" in only:
        variants["pg_dump -Fc -Z1"] = lambda: b.raw_dump("-Z", "1")
    if only & {"2", "3"}:
        variants["pg_dump -Fc"] = b.raw_dump
    if "3" in only:
        variants["invoke backup --jobs 2"] = b.inv_backup_jobs2
    restore_src = None
    if "4" in only:
        b.clear_backups()
        b.invoke("backup", "--no-retention")
        keep = out / "restore-source"
        shutil.rmtree(keep, ignore_errors=True)
        shutil.copytree(b.backups, keep)
        restore_src = next(keep.glob("*.dump"))
        variants["pg_restore"] = lambda: b.raw_restore(restore_src)
        variants["invoke restore"] = lambda: b.inv_restore(restore_src)
        if "5" in only:
            variants["invoke restore --pre-backup"] = lambda: b.inv_restore(
                restore_src, "--pre-backup"
            )
    if a.empty:
        variants["empty: invoke backup"] = b.empty_backup
        variants["empty: pg_dump -Fc -Z1"] = b.empty_raw
    results: dict[str, list[tuple[float, int]]] = {k: [] for k in variants}
    names = list(variants)
    for r in range(a.runs):
        order = names[r % len(names) :] + names[: r % len(names)]
        if r % 2:
            order.reverse()
        for name in order:
            took, size_b = variants[name]()
            results[name].append((took, size_b))
            print(f"round {r + 1}: {name:24} {took:6.1f} s  {size_b / 1e6:7.0f} MB", flush=True)
    med = {k: (median([t for t, _ in v]), median([s for _, s in v])) for k, v in results.items()}
    print("\nmedians of", a.runs, "alternating runs:")
    for k, (t, s) in med.items():
        print(f"  {k:24} {t:6.1f} s  {s / 1e6:7.0f} MB")
    print("\nratios:")
    if a.empty:
        print(
            f"  empty database: invoke backup {med['empty: invoke backup'][0]:.2f} s, raw pg_dump "
            f"{med['empty: pg_dump -Fc -Z1'][0]:.2f} s (fixed cost "
            f"{med['empty: invoke backup'][0] - med['empty: pg_dump -Fc -Z1'][0]:.2f} s)"
        )
    if "1" in only:
        print(
            f"  1. (P1a) invoke backup / pg_dump -Fc -Z1 (same format+compression): "
            f"{med['invoke backup'][0] / med['pg_dump -Fc -Z1'][0]:.2f}   (target <= 1.05)"
        )
    if "2" in only:
        print(
            "  2. pg_dump -Fc / invoke backup: "
            f"{med['pg_dump -Fc'][0] / med['invoke backup'][0]:.2f}x faster, "
            f"bytes {med['invoke backup'][1] / med['pg_dump -Fc'][1]:.2f}x   "
            "(target >= 1.8x at <= 1.10x bytes)"
        )
    if "3" in only:
        print(
            "  3. pg_dump -Fc / invoke backup --jobs 2: "
            f"{med['pg_dump -Fc'][0] / med['invoke backup --jobs 2'][0]:.2f}x "
            "faster   (target >= 1.7x)"
        )
    if "4" in only:
        print(
            f"  4. (P3) invoke restore / pg_restore: "
            f"{med['invoke restore'][0] / med['pg_restore'][0]:.2f}   (target <= 1.15; includes "
            f"the checks and the swap; no pre-restore dump)"
        )
    if "5" in only and "4" in only:
        print(
            f"  5. invoke restore --pre-backup / pg_restore: "
            f"{med['invoke restore --pre-backup'][0] / med['pg_restore'][0]:.2f}"
        )


if __name__ == "__main__":
    sys.exit(main())
