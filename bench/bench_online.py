"""Benchmark: the price and the gain of dbops.online. Not a timed test.

    .venv/bin/python bench/bench_online.py [--rows 1000000] [--runs 1] [--only index,check]
                                           [--keep DIR]

One table of --rows rows (`big`: int primary key, an int, a varchar(200), an int referencing
`parent`) and one without a primary key (`nopk`), built once in a template database. Per
pattern of tests/test_online.py (PAIRS: index, foreign_key, check, set_not_null, unique,
primary_key, add_column, backfill) the plain Alembic form and the dbops.online form each run
as one revision through the rehearsal (the agent's rehearse.run on a fresh copy of the
template, with its probe reading and writing the table all along), alternating which goes
first. Reported per pattern and form: the worst time readers and writers were blocked (the
rehearsal's verdict numbers) and the revision's total duration; online/plain is the price of
safety.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import harness  # noqa: E402  (bench/, beside this script)
from psycopg import sql  # noqa: E402

from dbops.agent.rehearse import prefix_for  # noqa: E402
from dbops.agent_client import Agent  # noqa: E402
from dbops.config import load_settings  # noqa: E402
from dbops.ops.rehearse_verdict import judge  # noqa: E402
from tests.test_online import PAIRS  # noqa: E402
from tests.test_rehearse_corpus import project  # noqa: E402

LIVE = "ob"


def template_sql(rows: int) -> list[str]:
    return [
        "CREATE TABLE parent (id int PRIMARY KEY)",
        "INSERT INTO parent SELECT g FROM generate_series(0, 999) g",
        "CREATE TABLE big (id int PRIMARY KEY, a int NOT NULL, b varchar(200), pid int)",
        f"INSERT INTO big SELECT g, g % 1000, 'x' || g, g % 1000 FROM generate_series(1, {rows}) g",
        "CREATE TABLE nopk (id int, a int)",
        f"INSERT INTO nopk SELECT g, g FROM generate_series(1, {rows}) g",
        "VACUUM ANALYZE",
    ]


def body(code: str) -> str:
    return "    import dbops.online  # noqa: F401\n    " + code


def rehearse_once(c, template: str, settings_env: dict, work: Path, code: str) -> dict:
    ini = project(work, body(code))
    settings = load_settings(ROOT, environ={**settings_env, "DBOPS_ALEMBIC_INI": str(ini)})
    copy = f"{prefix_for(LIVE)}{uuid.uuid4().hex[:8]}"
    with c.connect() as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(copy), sql.Identifier(template)
            )
        )
    try:
        with Agent(settings) as agent:
            res = agent.call("rehearse.run", name=copy, revisions=["r0001"], lock_timeout="30s")
    finally:
        with c.connect() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(copy))
            )
    rev = judge(res["revisions"][0])
    if rev["error"]:
        raise SystemExit(f"failed: {code}\n{rev['error']}")
    return rev


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--only", default="", help="comma-separated patterns (default: all)")
    p.add_argument("--keep", help="cluster folder to create or reuse")
    args = p.parse_args()
    kinds = [k for k in PAIRS if not args.only or k in args.only.split(",")]
    with harness.cluster(args.keep) as (c, _), tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        template = f"online_tpl_{args.rows}"
        with c.connect() as conn:
            if not conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", [template]
            ).fetchone():
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(template)))
                with c.connect(template) as tconn:
                    for stmt in template_sql(args.rows):
                        tconn.execute(stmt)
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [LIVE]).fetchone():
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(LIVE)))
        env = harness.invoke_env(c, LIVE, out)
        rows = []
        for kind in kinds:
            online_code, plain_code, pattern = PAIRS[kind]
            got: dict[str, list[dict]] = {"plain": [], "online": []}
            for r in range(args.runs):
                order = (
                    ["plain", "online"] if (r + kinds.index(kind)) % 2 == 0 else ["online", "plain"]
                )
                for form in order:
                    code = plain_code if form == "plain" else online_code
                    work = out / f"{kind}-{form}-{r}"
                    rev = rehearse_once(c, template, env, work, code)
                    got[form].append(rev)
                    print(
                        f"{kind:13} {form:6} round {r + 1}: {rev['seconds']:7.2f} s, "
                        f"reads blocked {rev['blocks_reads_s']:6.3f} s, writes blocked "
                        f"{rev['blocks_writes_s']:6.3f} s, {rev['verdict']}",
                        flush=True,
                    )
            rows.append((kind, pattern, got))
        print(f"\n{args.rows:,} rows, medians of {args.runs} run(s):\n")
        print(
            "| pattern | plain: reads / writes blocked | online: reads / writes blocked "
            "| plain s | online s | online / plain |"
        )
        print("|---|---|---|---|---|---|")
        for kind, pattern, got in rows:
            m = {
                (form, key): statistics.median(x[key] for x in got[form])
                for form in got
                for key in ("seconds", "blocks_reads_s", "blocks_writes_s")
            }
            plain_s, online_s = m["plain", "seconds"], m["online", "seconds"]
            print(
                f"| {kind} (`{pattern}`) "
                f"| {m['plain', 'blocks_reads_s']:.2f} / {m['plain', 'blocks_writes_s']:.2f} s "
                f"| {m['online', 'blocks_reads_s']:.3f} / {m['online', 'blocks_writes_s']:.3f} s "
                f"| {plain_s:.2f} | {online_s:.2f} | {online_s / plain_s:.1f}x |"
            )
            flagged = [x["flagged"] for x in got["online"]]
            if any(flagged):
                print(f"  ! the online form of {kind} was flagged: {got['online'][0]['verdict']}")


if __name__ == "__main__":
    main()
