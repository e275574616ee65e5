"""Benchmark: migrate and roll back on a long history (issue 23, item 7).

    .venv/bin/python bench/bench_long_history.py [--revisions 40] [--runs 3] [--keep DIR]

A generated linear history (bench/gen_history.py: tables, columns, indexes), side by side in
alternating order on one throwaway cluster:
- from an empty database to head: `invoke migrate` (verified pre-migrate backup, lock, one
  transaction per revision under lock_timeout, version row verified after each, models) vs bare
  `alembic upgrade head`;
- from head: `invoke rollback --to=-3 --yes` vs bare `alembic downgrade -3` plus the time of the
  backup a rollback takes first (`invoke backup`).
Prints every timing, the medians and the ratios. Goal for migrate: <= 1.3x.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import harness  # noqa: E402
from gen_history import generate  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--revisions", type=int, default=40)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--keep", help="cluster folder to create or reuse (default: a temporary one)")
    p.add_argument("--skip-rollback", action="store_true")
    a = p.parse_args()
    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="dbops-bench-long-") as tmp_s:
        tmp = Path(tmp_s)
        ini = generate(tmp / "project", a.revisions)
        with harness.cluster(a.keep) as (c, _):
            db = "bench_long"
            env = harness.invoke_env(c, db, tmp, DBOPS_ALEMBIC_INI=str(ini))

            def fresh() -> None:
                with c.connect() as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
                c.create_database(db)

            def alembic(*args: str) -> float:
                return harness.run([py, "-m", "alembic", "-c", str(ini), *args], env, ROOT)[0]

            def invoke(*args: str) -> float:
                return harness.run([py, "-m", "invoke", *args], env, ROOT)[0]

            def timed_from_empty(fn):
                def variant() -> float:
                    fresh()
                    return fn()

                return variant

            print(f"{a.revisions} revisions, PostgreSQL at {c.port}; migrate from empty:")
            up = harness.alternate(
                {
                    "alembic upgrade head": timed_from_empty(lambda: alembic("upgrade", "head")),
                    "invoke migrate": timed_from_empty(lambda: invoke("migrate")),
                    "migrate --no-backup": timed_from_empty(
                        lambda: invoke("migrate", "--no-backup")
                    ),
                },
                a.runs,
            )
            ratio_up = up["invoke migrate"] / up["alembic upgrade head"]
            ratio_nb = up["migrate --no-backup"] / up["alembic upgrade head"]
            print(
                f"ratio migrate / alembic upgrade head: {ratio_up:.2f}x (goal <= 1.3x); "
                f"without the pre-migrate backup: {ratio_nb:.2f}x\n"
            )
            if a.skip_rollback:
                return

            def from_head(fn):
                def variant() -> float:
                    alembic("upgrade", "head")
                    return fn()

                return variant

            print("from head, three revisions down:")
            down = harness.alternate(
                {
                    "alembic downgrade -3": from_head(lambda: alembic("downgrade", "-3")),
                    "invoke backup": from_head(lambda: invoke("backup")),
                    "invoke rollback": from_head(lambda: invoke("rollback", "--to=-3", "--yes")),
                },
                a.runs,
            )
            bare = down["alembic downgrade -3"] + down["invoke backup"]
            print(
                f"ratio rollback / (alembic downgrade -3 + backup): "
                f"{down['invoke rollback'] / bare:.2f}x; "
                f"rollback / alembic downgrade -3: "
                f"{down['invoke rollback'] / down['alembic downgrade -3']:.2f}x"
            )


if __name__ == "__main__":
    main()
