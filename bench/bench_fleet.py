"""Benchmark: `invoke fleet migrate` over many small databases, --parallel P vs serial, and the
fleet runner's per-database overhead vs a single `invoke migrate`.

On one throwaway cluster (dbops.localpg.new_cluster(), max_connections 200):
  1. --singles databases migrated one by one with plain `invoke migrate` (wall time each);
  2. --size databases migrated by `invoke fleet migrate --parallel 1` (serial);
  3. --size fresh databases migrated by `invoke fleet migrate --parallel P`.
Each migrate is the sample history (6 revisions) with its verified pre-migrate backup and the
models check. Reported: wall time of each fleet run, databases per second, the speed-up, and
the per-database overhead of the fleet = serial wall / size - mean single migrate wall.

    .venv/bin/python bench/bench_fleet.py [--size 200] [--parallel 8] [--singles 5] [--json]

Figures depend on the cores: parallelism past the core count only adds contention.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dbops import localpg  # noqa: E402


def base_env(cluster: localpg.Cluster, work: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("POSTGRES_", "DBOPS_", "PG", "DATABASE_URL"))
    }
    env.update(
        {
            "DBOPS_TARGET": "local",
            "DBOPS_ENV_FILE": str(work / "no.env"),
            "DBOPS_ALEMBIC_INI": str(ROOT / "backend" / "alembic.ini"),
            "DBOPS_PG_BINDIR": cluster.bindir,
            "DBOPS_BACKUP_DIR": str(work / "backups"),
            "DBOPS_FLEET_DIR": str(work / "fleet"),
            "DBOPS_FLEET_FILE": str(work / "fleet.toml"),
            "DBOPS_QUIET": "1",
            "POSTGRES_HOST": "127.0.0.1",
            "POSTGRES_PORT": str(cluster.port),
            "POSTGRES_USER": cluster.user,
            "POSTGRES_DB": "postgres",
            "BENCH_PG_PASSWORD": cluster.password,
        }
    )
    return env


def fleet_run(cluster: localpg.Cluster, work: Path, prefix: str, size: int, parallel: int) -> dict:
    for i in range(size):
        cluster.create_database(f"{prefix}_{i:04d}")
    (work / "fleet.toml").write_text(
        f"[[discover]]\nwhere = \"datname LIKE '{prefix}\\\\_%'\"\n"
        'password_env = "BENCH_PG_PASSWORD"\n'
    )
    shutil.rmtree(work / "fleet", ignore_errors=True)
    t0 = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "invoke",
            "fleet",
            "migrate",
            "--parallel",
            str(parallel),
            "--max-failures",
            "0",
            "--json",
        ],
        cwd=ROOT,
        env=base_env(cluster, work),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    wall = time.monotonic() - t0
    if done.returncode != 0:
        sys.exit(f"fleet run failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    report = json.loads(done.stdout)
    assert report["counts"]["ok"] == size, report["counts"]
    return {
        "parallel": parallel,
        "size": size,
        "wall_s": round(wall, 2),
        "db_per_s": round(size / wall, 2),
        "max_running": report["max_running"],
        "mean_db_s": round(statistics.mean(r["seconds"] for r in report["databases"]), 2),
    }


def singles(cluster: localpg.Cluster, work: Path, n: int) -> list[float]:
    walls = []
    for i in range(n):
        name = f"single_{i:03d}"
        cluster.create_database(name)
        env = {
            **base_env(cluster, work),
            "POSTGRES_DB": name,
            "POSTGRES_PASSWORD": cluster.password,
        }
        t0 = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "invoke", "migrate"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        walls.append(time.monotonic() - t0)
        if done.returncode != 0:
            sys.exit(f"invoke migrate failed:\n{done.stderr[-3000:]}")
    return walls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=200)
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--singles", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dbops-bench-fleet-"))
    cluster = localpg.new_cluster()
    try:
        if a.parallel * 5 > 190:  # localpg starts the server with max_connections=200
            sys.exit(
                "--parallel too high for this cluster's max_connections (200): each migrate "
                "holds ~5 connections at its peak (agent, lock, alembic, pg_dump)"
            )
        one = singles(cluster, work, a.singles)
        serial = fleet_run(cluster, work, "ser", a.size, 1)
        par = fleet_run(cluster, work, "par", a.size, a.parallel)
        single = statistics.mean(one)
        result = {
            "cores": os.cpu_count(),
            "size": a.size,
            "single_migrate_s": round(single, 2),
            "serial": serial,
            "parallel": par,
            "speedup": round(serial["wall_s"] / par["wall_s"], 2),
            "fleet_overhead_per_db_s": round(serial["wall_s"] / a.size - single, 3),
        }
        if a.json:
            print(json.dumps(result, indent=2))
        else:
            print(
                f"{a.size} databases, sample history (6 revisions, verified backup, models check), "
                f"{result['cores']} cores"
            )
            print(f"single invoke migrate:        {single:.2f} s (mean of {a.singles})")
            print(
                f"fleet --parallel 1:           {serial['wall_s']:.1f} s  "
                f"({serial['db_per_s']} db/s)"
            )
            print(
                f"fleet --parallel {a.parallel}:           {par['wall_s']:.1f} s  "
                f"({par['db_per_s']} db/s, at most {par['max_running']} at once, "
                f"{par['mean_db_s']} s per database)"
            )
            print(f"speed-up:                     {result['speedup']}x")
            print(
                f"fleet overhead per database:  {result['fleet_overhead_per_db_s'] * 1000:.0f} ms "
                f"(serial wall / size - single migrate)"
            )
    finally:
        cluster.destroy()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
