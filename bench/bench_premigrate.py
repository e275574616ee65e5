"""Benchmark P7: `invoke migrate` with a touched pre-migrate backup on a large database whose
pending revision writes one small table, against a bare `alembic upgrade` of the same revision
(goal: <= bare + 2 s), with the full-backup migrate beside it. Not a timed test.

    .venv/bin/python bench/bench_premigrate.py [--gb 3] [--small-mb 10] [--runs 3] [--keep DIR]

The sample schema holds the data (so the models still match and migrate verifies as usual):
`comments` gets --gb of text, `tags` ~--small-mb. The pending revision is a data migration on
`tags` only (UPDATE … SET name = lower(name)); each round undoes it with `alembic downgrade -1`
(untimed; the downgrade is empty, the UPDATE idempotent) and clears the backup folder.
Variants, alternating order each round, medians reported:
  bare      alembic upgrade head                             (no dbops)
  none      invoke migrate --no-backup
  touched   invoke migrate, DBOPS_PREMIGRATE_BACKUP=touched   (what auto picks above 100 MB)
  full      invoke migrate, DBOPS_PREMIGRATE_BACKUP=full
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sample_data  # noqa: E402  (bench/, beside this script)

from dbops import localpg  # noqa: E402
from tests.fixtures.projects import HEADER, SAMPLE_HEAD, make_project  # noqa: E402

DB = "p7"
REV = "7d7d7d000001"
BODY = '''
def upgrade():
    op.execute("UPDATE tags SET name = lower(name)")


def downgrade():
    pass
'''


def build(cluster: localpg.Cluster, env: dict, gb: float, small_mb: float, ini: Path) -> int:
    return sample_data.build(cluster, env, DB, gb, ini, tags=int(small_mb * 1e6 / 100) + 1)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gb", type=float, default=3.0)
    p.add_argument("--small-mb", type=float, default=10.0)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--keep", help="cluster folder to create or reuse")
    a = p.parse_args()
    out = ROOT / "bench" / "out" / "p7"
    shutil.rmtree(out / "project", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    ini = make_project(out, patch_models=False)
    (ini.parent / "alembic" / "versions" / f"{REV}_tags.py").write_text(
        HEADER.format(message="lower-case tag names", rev=REV, down=SAMPLE_HEAD,
                      down_repr=repr(SAMPLE_HEAD), labels="None") + BODY)
    reuse = a.keep and (Path(a.keep) / "cluster.json").exists()
    cluster = localpg.load(a.keep) if reuse else localpg.new_cluster(a.keep, fast=False)
    if reuse and not (cluster.data / "postmaster.pid").exists():
        cluster.start(fast=False)
    backups = out / "backups"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("POSTGRES_", "DBOPS_", "PG", "DATABASE_URL"))}
    env.update(cluster.env(DB))
    env.update({"DBOPS_TARGET": "local", "DBOPS_ENV_FILE": str(out / "no.env"),
                "DBOPS_BACKUP_DIR": str(backups), "DBOPS_BACKUP_RETENTION": "off",
                "DBOPS_ALEMBIC_INI": str(ini), "DBOPS_QUIET": "1"})
    try:
        if reuse:
            with cluster.connect(DB) as conn:
                size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
        else:
            t = time.monotonic()
            size = build(cluster, env, a.gb, a.small_mb, ini)
            print(f"built {size / 1e9:.2f} GB in {time.monotonic() - t:.0f} s")
        with cluster.connect(DB) as conn:
            tags = conn.execute("SELECT pg_total_relation_size('tags')").fetchone()[0]
        print(f"database {size / 1e9:.2f} GB; the touched table (tags) {tags / 1e6:.1f} MB")
        alembic = str(Path(sys.executable).parent / "alembic")

        def run(argv, extra=None) -> float:
            t = time.monotonic()
            done = subprocess.run(argv, env={**env, **(extra or {})}, cwd=ROOT, capture_output=True,
                                  text=True, stdin=subprocess.DEVNULL)
            took = time.monotonic() - t
            if done.returncode != 0:
                raise SystemExit(f"failed: {argv}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
            return took

        def undo() -> None:
            run([alembic, "-c", str(ini), "downgrade", SAMPLE_HEAD])
            shutil.rmtree(backups, ignore_errors=True)

        invoke = [sys.executable, "-m", "invoke", "migrate"]
        variants = {
            "bare alembic upgrade": lambda: run([alembic, "-c", str(ini), "upgrade", "head"]),
            "migrate --no-backup": lambda: run([*invoke, "--no-backup"]),
            "migrate (touched)": lambda: run(invoke, {"DBOPS_PREMIGRATE_BACKUP": "touched"}),
            "migrate (full)": lambda: run(invoke, {"DBOPS_PREMIGRATE_BACKUP": "full"}),
        }
        results: dict[str, list[float]] = {k: [] for k in variants}
        names = list(variants)
        for r in range(a.runs):
            order = names[r % len(names):] + names[: r % len(names)]
            if r % 2:
                order.reverse()
            for name in order:
                took = variants[name]()
                results[name].append(took)
                print(f"round {r + 1}: {name:22} {took:6.2f} s", flush=True)
                undo()
        med = {k: statistics.median(v) for k, v in results.items()}
        print(f"\nmedians of {a.runs} alternating runs ({size / 1e9:.2f} GB database, "
              f"touched table {tags / 1e6:.1f} MB):")
        for k, v in med.items():
            print(f"  {k:22} {v:6.2f} s")
        gap = med["migrate (touched)"] - med["bare alembic upgrade"]
        print(f"\nP7: migrate with a touched backup = bare upgrade + {gap:.2f} s (goal <= + 2 s); "
              f"with a full backup: {med['migrate (full)']:.2f} s")
    finally:
        if not a.keep:
            cluster.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
