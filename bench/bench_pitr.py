"""Benchmark: point-in-time recovery with pgBackRest against dbops' logical backups. Not a test.

    .venv/bin/python bench/bench_pitr.py [--scale 30] [--runs 3] [--keep DIR]

Builds (or reuses, with --keep) a throwaway cluster (fsync on) with `pgbench -i -s SCALE`
(70 ~ 1 GB), turns archiving on with invoke pitr-enable (and the restart it prints), then:
  1. invoke backup --physical (full) vs invoke backup (pg_dump, read back in full), side by
     side, alternating, medians: seconds and bytes stored;
  2. invoke restore --to-time (end to end, the live server up) once, split as the command
     reports it: side instance (raw pgbackrest restore + start + WAL replay: what an in-place
     restore would cost, with the server down) vs the logical bring-back (dump + restore +
     swap, the price of keeping the server up).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import harness  # noqa: E402  (bench/, beside this script)

from dbops import localpg  # noqa: E402

DB = "bench"


def build(cluster: localpg.Cluster, scale: int) -> int:
    cluster.create_database(DB)
    env = {**os.environ, "PGPASSWORD": cluster.password}
    subprocess.run(
        [
            str(Path(cluster.bindir) / "pgbench"),
            "-i",
            "-q",
            "-s",
            str(scale),
            "-h",
            "127.0.0.1",
            "-p",
            str(cluster.port),
            "-U",
            cluster.user,
            DB,
        ],
        env=env,
        check=True,
        capture_output=True,
    )
    return harness.database_size(cluster, DB)


def enable(env: dict[str, str]) -> None:
    _, out = harness.run([sys.executable, "-m", "invoke", "pitr-enable", "--yes"], env, ROOT)
    restart = next(
        (ln.strip() for ln in out.splitlines() if "restart" in ln and "pg_ctl" in ln), None
    )
    if restart:
        subprocess.run(restart, shell=True, check=True, capture_output=True)
        harness.run([sys.executable, "-m", "invoke", "pitr-enable", "--yes"], env, ROOT)


def main() -> None:
    p = harness.parser(__doc__, gb=0)
    p.add_argument("--scale", type=int, default=30)
    a = p.parse_args()
    with harness.cluster(a.keep) as (cluster, reused):
        out = Path(cluster.root) / "bench-out"
        out.mkdir(exist_ok=True)
        size = harness.database_size(cluster, DB) if reused else build(cluster, a.scale)
        print(f"database: pgbench -s {a.scale}, {size / 1e9:.2f} GB")
        env = harness.invoke_env(
            cluster,
            DB,
            out,
            DBOPS_PITR_REPO=str(Path(cluster.root) / "pgbackrest"),
            DBOPS_PITR_RETENTION_FULL="2",
        )
        enable(env)
        dumps = out / "backups"

        def physical() -> float:
            took, _ = harness.run(
                [sys.executable, "-m", "invoke", "backup", "--physical"], env, ROOT
            )
            return took

        def logical() -> float:
            took, _ = harness.run([sys.executable, "-m", "invoke", "backup"], env, ROOT)
            return took

        med = harness.alternate(
            {"backup --physical": physical, "backup (pg_dump)": logical}, a.runs
        )
        print(
            f"\nphysical / pg_dump time: {med['backup --physical'] / med['backup (pg_dump)']:.2f}"
        )
        records = [json.loads(ln) for ln in (dumps / "audit.jsonl").read_text().splitlines()]
        phys_runs = [r for r in records if r.get("action") == "backup-physical"]
        backup_s = statistics.median(r["duration_s"] for r in phys_runs)
        verify_s = statistics.median(r["verify_s"] for r in phys_runs)
        print(
            f"  of which pgbackrest backup {backup_s:.2f} s, pgbackrest verify (whole repository) "
            f"{verify_s:.2f} s; backup alone / pg_dump (read back in full): "
            f"{backup_s / med['backup (pg_dump)']:.2f}"
        )
        newest_dump = max(dumps.glob("*.dump"), key=lambda q: q.stat().st_mtime)
        _, listing = harness.run([sys.executable, "-m", "invoke", "backups", "--json"], env, ROOT)
        phys = [e for e in json.loads(listing) if e.get("kind") == "physical"][0]
        print(
            f"stored: physical {phys['stored'] / 1e6:.1f} MB (of {phys['size'] / 1e6:.1f} MB "
            f"copied), pg_dump {newest_dump.stat().st_size / 1e6:.1f} MB"
        )
        with cluster.connect(DB) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS pitr_mark (at timestamptz)")
            conn.execute("INSERT INTO pitr_mark VALUES (clock_timestamp())")
            (t,) = conn.execute("SELECT clock_timestamp()::text").fetchone()
            time.sleep(0.2)
            conn.execute("INSERT INTO pitr_mark VALUES (clock_timestamp())")
        took, _ = harness.run(
            [sys.executable, "-m", "invoke", "restore", f"--to-time={t}", "--yes"], env, ROOT
        )
        record = [
            json.loads(ln)
            for ln in (dumps / "audit.jsonl").read_text().splitlines()
            if '"restore-pitr"' in ln
        ][-1]
        tm = record["timings"]
        side, back = tm["side_instance_s"], tm["dump_s"] + tm["restore_s"]
        print(
            f"\nrestore --to-time end to end: {took:.1f} s (command {tm['total_s']:.1f} s)\n"
            f"  side instance (pgbackrest restore + start + replay; ~ an in-place restore): "
            f"{side:.1f} s\n"
            f"  logical bring-back (dump {tm['dump_s']:.1f} s + restore/swap "
            f"{tm['restore_s']:.1f} s): {back:.1f} s = {back / side:.2f} x the side instance"
        )


if __name__ == "__main__":
    main()
