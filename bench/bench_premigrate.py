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

import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import harness  # noqa: E402  (bench/, beside this script)
import sample_data  # noqa: E402

from tests.fixtures.projects import SAMPLE_HEAD  # noqa: E402

DB = "p7"
REV = "7d7d7d000001"
BODY = """
def upgrade():
    op.execute("UPDATE tags SET name = lower(name)")


def downgrade():
    pass
"""


def main() -> int:
    p = harness.parser(__doc__, gb=3.0)
    p.add_argument("--small-mb", type=float, default=10.0)
    a = p.parse_args()
    out = ROOT / "bench" / "out" / "p7"
    ini = sample_data.project(
        out, rev=REV, message="lower-case tag names", body=BODY, patch_models=False
    )
    with harness.cluster(a.keep) as (cluster, reused):
        env = harness.invoke_env(cluster, DB, out, DBOPS_ALEMBIC_INI=str(ini))
        if reused:
            size = harness.database_size(cluster, DB)
        else:
            t = time.monotonic()
            size = sample_data.build(
                cluster, env, DB, a.gb, ini, tags=int(a.small_mb * 1e6 / 100) + 1
            )
            print(f"built {size / 1e9:.2f} GB in {time.monotonic() - t:.0f} s")
        with cluster.connect(DB) as conn:
            tags = conn.execute("SELECT pg_total_relation_size('tags')").fetchone()[0]
        print(f"database {size / 1e9:.2f} GB; the touched table (tags) {tags / 1e6:.1f} MB")
        alembic = str(Path(sys.executable).parent / "alembic")

        def timed(argv, extra=None):
            return lambda: harness.run(argv, {**env, **(extra or {})}, ROOT)[0]

        def undo() -> None:
            harness.run([alembic, "-c", str(ini), "downgrade", SAMPLE_HEAD], env, ROOT)
            shutil.rmtree(out / "backups", ignore_errors=True)

        invoke = [sys.executable, "-m", "invoke", "migrate"]
        variants = {
            "bare alembic upgrade": timed([alembic, "-c", str(ini), "upgrade", "head"]),
            "migrate --no-backup": timed([*invoke, "--no-backup"]),
            "migrate (touched)": timed(invoke, {"DBOPS_PREMIGRATE_BACKUP": "touched"}),
            "migrate (full)": timed(invoke, {"DBOPS_PREMIGRATE_BACKUP": "full"}),
        }
        med = harness.alternate(
            {k: (lambda f=f: (f(), undo())[0]) for k, f in variants.items()}, a.runs
        )
        gap = med["migrate (touched)"] - med["bare alembic upgrade"]
        print(
            f"\nP7 ({size / 1e9:.2f} GB database, touched table {tags / 1e6:.1f} MB): migrate with "
            f"a touched backup = bare upgrade + {gap:.2f} s (goal <= + 2 s); with a full backup: "
            f"{med['migrate (full)']:.2f} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
