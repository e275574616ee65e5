"""Benchmark: `invoke recover` end to end on a generated history of 10, 25 and 50 revisions.

    .venv/bin/python bench/bench_recover.py [--sizes 10,25,50] [--runs 3]

For each size: a throwaway cluster (dbops.localpg), a database upgraded to head with the
generated history, its alembic_version dropped (the baseline case: recover must find the
head by fingerprint); then `invoke recover` as an operator runs it, cold (empty cache:
the expected schemas are built on a scratch database) and cached (second run). Reports the
median wall time of each, and the scratch build time recover printed. Target: <= 10 s at 50
revisions, growing linearly. Results also go to bench/out/recover.json (not committed).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import harness  # noqa: E402
from gen_history import generate, rev_id  # noqa: E402

from dbops import localpg  # noqa: E402


def run(args: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "invoke", *args],
        cwd=ROOT,
        env=env,
        text=True,
        capture_output=True,
        stdin=subprocess.DEVNULL,
    )
    return time.perf_counter() - t0, done


def bench_size(cluster, n: int, runs: int, tmp: Path) -> dict:
    proj = tmp / f"hist{n}"
    ini = generate(proj, n)
    database = f"bench{n}"
    cluster.create_database(database)
    env = harness.invoke_env(
        cluster, database, tmp, DBOPS_ALEMBIC_INI=str(ini), DBOPS_CACHE_DIR=str(tmp / f"cache{n}")
    )
    done = subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(ini), "upgrade", "head"],
        env=env,
        text=True,
        capture_output=True,
        stdin=subprocess.DEVNULL,
    )
    if done.returncode != 0:
        raise SystemExit(f"alembic upgrade failed at {n}: {done.stderr[-2000:]}")
    with cluster.connect(database) as conn:
        conn.execute("DROP TABLE alembic_version")
    head = rev_id(n)
    cold, cached, built = [], [], []
    for _ in range(runs):
        shutil.rmtree(tmp / f"cache{n}", ignore_errors=True)
        t, done = run(["recover"], env)
        if done.returncode != 0 or f"MATCH:     {head}" not in done.stdout:
            raise SystemExit(f"recover did not name {head} at {n}:\n{done.stdout}\n{done.stderr}")
        cold.append(t)
        m = re.search(r"built on a scratch database in ([\d.]+) s", done.stdout)
        built.append(float(m.group(1)) if m else float("nan"))
        t, done = run(["recover"], env)
        if "from cache" not in done.stdout:
            raise SystemExit(f"second run did not use the cache at {n}:\n{done.stdout}")
        cached.append(t)
    return {
        "revisions": n,
        "cold_s": round(statistics.median(cold), 2),
        "cached_s": round(statistics.median(cached), 2),
        "scratch_build_s": round(statistics.median(built), 2),
        "per_revision_ms": round(1000 * statistics.median(built) / n, 1),
        "runs": runs,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="10,25,50")
    p.add_argument("--runs", type=int, default=3)
    a = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="dbops-bench-recover-"))
    cluster = localpg.new_cluster()
    try:
        rows = [bench_size(cluster, int(n), a.runs, tmp) for n in a.sizes.split(",")]
    finally:
        cluster.destroy()
        shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"{'revisions':>9}  {'cold (s)':>9}  {'cached (s)':>10}  {'scratch build (s)':>17}  "
        f"{'ms/revision':>11}"
    )
    for r in rows:
        print(
            f"{r['revisions']:>9}  {r['cold_s']:>9.2f}  {r['cached_s']:>10.2f}  "
            f"{r['scratch_build_s']:>17.2f}  {r['per_revision_ms']:>11.1f}"
        )
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "recover.json").write_text(json.dumps(rows, indent=2))
    print("target: <= 10 s at 50 revisions (cold), growing linearly")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
