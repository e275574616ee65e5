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

import argparse
import json
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
from tests.fixtures.projects import HEADER, REVS, SAMPLE_HEAD, make_project  # noqa: E402

DB = "rh"
RETYPE = "7e7e7e000002"
RETYPE_BODY = '''
def upgrade():
    # the same type with USING: a full rewrite under ACCESS EXCLUSIVE, the models still match
    op.execute("ALTER TABLE comments ALTER COLUMN author_name TYPE varchar(100) USING author_name || ''")


def downgrade():
    pass
'''


def build(cluster: localpg.Cluster, env: dict, gb: float, ini: Path) -> int:
    return sample_data.build(cluster, env, DB, gb, ini)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gb", type=float, default=1.0)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--keep", help="cluster folder to create or reuse")
    a = p.parse_args()
    out = ROOT / "bench" / "out" / "rehearse"
    shutil.rmtree(out / "project", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    ini = make_project(out, "flag", patch_models=True)
    (ini.parent / "alembic" / "versions" / f"{RETYPE}_retype.py").write_text(
        HEADER.format(message="retype author_name", rev=RETYPE, down=REVS["flag"].rev,
                      down_repr=repr(REVS["flag"].rev), labels="None") + RETYPE_BODY)
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
                "DBOPS_CACHE_DIR": str(out / "cache"), "DBOPS_ALEMBIC_INI": str(ini),
                "DBOPS_QUIET": "1"})
    alembic = str(Path(sys.executable).parent / "alembic")
    bindir = Path(cluster.bindir)

    def run(argv, extra=None) -> tuple[float, str]:
        t = time.monotonic()
        done = subprocess.run(argv, env={**env, **(extra or {})}, cwd=ROOT, capture_output=True,
                              text=True, stdin=subprocess.DEVNULL)
        took = time.monotonic() - t
        if done.returncode != 0:
            raise SystemExit(f"failed: {argv}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return took, done.stdout

    try:
        if reuse:
            with cluster.connect(DB) as conn:
                size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
        else:
            t = time.monotonic()
            size = build(cluster, env, a.gb, ini)
            print(f"built {size / 1e9:.2f} GB in {time.monotonic() - t:.0f} s")
        shutil.rmtree(backups, ignore_errors=True)
        run([sys.executable, "-m", "invoke", "backup"])
        dump = next(p for p in backups.iterdir() if p.name.endswith(".dump"))
        print(f"database {size / 1e9:.2f} GB; backup {dump.stat().st_size / 1e6:.0f} MB")

        def rehearse() -> float:
            took, stdout = run([sys.executable, "-m", "invoke", "rehearse", "--json"])
            rehearse.report = json.loads(stdout)
            return took

        pgenv = {"PGHOST": env["POSTGRES_HOST"], "PGPORT": env["POSTGRES_PORT"],
                 "PGUSER": env["POSTGRES_USER"], "PGPASSWORD": env["POSTGRES_PASSWORD"]}

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
            record = [json.loads(x) for x in (backups / "audit.jsonl").read_text().splitlines()
                      if '"migrate"' in x][-1]
            migrate.steps = {s["revision"]: s["seconds"] for s in record["steps"]}
            run([alembic, "-c", str(ini), "downgrade", SAMPLE_HEAD])
            return took

        variants = {"rehearse": rehearse, "raw restore + upgrade": raw, "migrate": migrate}
        results: dict[str, list[float]] = {k: [] for k in variants}
        predicted: dict[str, list[float]] = {}
        real: dict[str, list[float]] = {}
        names = list(variants)
        for r in range(a.runs):
            order = names[r % len(names):] + names[: r % len(names)]
            for name in order:
                took = variants[name]()
                results[name].append(took)
                print(f"round {r + 1}: {name:22} {took:6.2f} s", flush=True)
            for rev in rehearse.report["revisions"]:
                predicted.setdefault(rev["revision"], []).append(rev["seconds"])
            for rev, s in migrate.steps.items():
                real.setdefault(rev, []).append(s)
        med = {k: statistics.median(v) for k, v in results.items()}
        print(f"\nmedians of {a.runs} runs ({size / 1e9:.2f} GB database):")
        for k, v in med.items():
            print(f"  {k:22} {v:6.2f} s")
        print(f"rehearse / raw = {med['rehearse'] / med['raw restore + upgrade']:.2f}x (goal <= 1.1x)")
        for rev in predicted:
            pm, rm = statistics.median(predicted[rev]), statistics.median(real.get(rev, [0]))
            err = abs(pm - rm) / rm * 100 if rm else float("nan")
            print(f"  {rev}: predicted {pm:.2f} s, real migrate {rm:.2f} s ({err:.0f}% off; goal <= 25%)")
        for rev in rehearse.report["revisions"]:
            print(f"  verdict {rev['revision']}: {rev['verdict']}")
    finally:
        if not a.keep:
            cluster.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
