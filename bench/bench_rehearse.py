"""Benchmark: `invoke rehearse` against what it replaces, and its prediction against the real
migrate. Not a timed test.

    .venv/bin/python bench/bench_rehearse.py [--gb 1] [--runs 3] [--keep DIR]

The sample schema holds the data (`comments` gets --gb of text); the pending revisions are
the "flag" revision (ALTER TABLE comments ADD COLUMN + a non-concurrent CREATE INDEX on it) and
an ALTER COLUMN … TYPE on comments (a rewrite). One verified backup is taken (untimed). Per
round, alternating order:
  rehearse   invoke rehearse --json                      (restore + instrumented run + probe)
  raw        createdb + pg_restore of the same dump + bare `alembic upgrade head` + dropdb
  migrate    invoke migrate --no-backup on the live database (then `alembic downgrade`, untimed)
Reported: rehearse / raw (goal <= 1.1x) and, per revision, the rehearsal's predicted seconds
against the real migrate's step seconds (goal within 25%).
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import harness  # noqa: E402  (bench/, beside this script)
import sample_data  # noqa: E402

from tests.fixtures.projects import SAMPLE_HEAD  # noqa: E402

DB = "rh"
RETYPE = "7e7e7e000002"
RETYPE_BODY = """
def upgrade():
    # the same type with USING: a full rewrite under ACCESS EXCLUSIVE, the models still match
    op.execute("ALTER TABLE comments ALTER COLUMN author_name TYPE varchar(100) USING author_name || ''")


def downgrade():
    pass
"""  # noqa: E501


def main() -> int:
    p = harness.parser(__doc__, gb=1.0)
    a = p.parse_args()
    out = ROOT / "bench" / "out" / "rehearse"
    ini = sample_data.project(
        out, "flag", rev=RETYPE, message="retype author_name", body=RETYPE_BODY, patch_models=True
    )
    backups = out / "backups"
    with harness.cluster(a.keep) as (cluster, reused):
        env = harness.invoke_env(
            cluster, DB, out, DBOPS_ALEMBIC_INI=str(ini), DBOPS_CACHE_DIR=str(out / "cache")
        )
        alembic = str(Path(sys.executable).parent / "alembic")
        bindir = Path(cluster.bindir)

        def run(argv, extra=None) -> tuple[float, str]:
            return harness.run(argv, {**env, **(extra or {})}, ROOT)

        if reused:
            size = harness.database_size(cluster, DB)
        else:
            t = time.monotonic()
            size = sample_data.build(cluster, env, DB, a.gb, ini)
            print(f"built {size / 1e9:.2f} GB in {time.monotonic() - t:.0f} s")
        shutil.rmtree(backups, ignore_errors=True)
        run([sys.executable, "-m", "invoke", "backup"])
        dump = next(p for p in backups.iterdir() if p.name.endswith(".dump"))
        print(f"database {size / 1e9:.2f} GB; backup {dump.stat().st_size / 1e6:.0f} MB")
        predicted: dict[str, list[float]] = {}
        real: dict[str, list[float]] = {}
        reports: list[dict] = []

        def rehearse() -> float:
            took, stdout = run([sys.executable, "-m", "invoke", "rehearse", "--json"])
            reports.append(json.loads(stdout))
            for rev in reports[-1]["revisions"]:
                predicted.setdefault(rev["revision"], []).append(rev["seconds"])
            return took

        pgenv = {
            "PGHOST": env["POSTGRES_HOST"],
            "PGPORT": env["POSTGRES_PORT"],
            "PGUSER": env["POSTGRES_USER"],
            "PGPASSWORD": env["POSTGRES_PASSWORD"],
        }

        def raw() -> float:
            t = time.monotonic()
            run([str(bindir / "createdb"), "rh_raw"], pgenv)
            run([str(bindir / "pg_restore"), "--exit-on-error", "-d", "rh_raw", str(dump)], pgenv)
            run([alembic, "-c", str(ini), "upgrade", "head"], {"POSTGRES_DB": "rh_raw"})
            took = time.monotonic() - t
            run([str(bindir / "dropdb"), "rh_raw"], pgenv)
            return took

        def migrate() -> float:
            took, _ = run([sys.executable, "-m", "invoke", "migrate", "--no-backup"])
            record = [
                json.loads(x)
                for x in (backups / "audit.jsonl").read_text().splitlines()
                if '"migrate"' in x
            ][-1]
            for step in record["steps"]:
                real.setdefault(step["revision"], []).append(step["seconds"])
            run([alembic, "-c", str(ini), "downgrade", SAMPLE_HEAD])
            return took

        med = harness.alternate(
            {"rehearse": rehearse, "raw restore + upgrade": raw, "migrate": migrate}, a.runs
        )
        print(
            f"\n{size / 1e9:.2f} GB database: rehearse / raw = "
            f"{med['rehearse'] / med['raw restore + upgrade']:.2f}x (goal <= 1.1x)"
        )
        for rev in predicted:
            pm, rm = statistics.median(predicted[rev]), statistics.median(real.get(rev, [0]))
            err = abs(pm - rm) / rm * 100 if rm else float("nan")
            print(
                f"  {rev}: predicted {pm:.2f} s, real migrate {rm:.2f} s "
                f"({err:.0f}% off; goal <= 25%)"
            )
        for rev in reports[-1]["revisions"]:
            print(f"  verdict {rev['revision']}: {rev['verdict']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
