"""Benchmark: `invoke migrate` vs a bare `alembic upgrade head` under write load.

Same setup for both, on a throwaway cluster (dbops.localpg.new_cluster()):
  - the sample history at its head, plus one revision that ALTERs comments (add a column,
    ACCESS EXCLUSIVE) and creates an index on it (tests/fixtures/projects.py "flag");
  - comments filled with --rows rows;
  - pgbench clients running UPDATE + SELECT on comments for the whole run, every
    transaction's latency logged;
  - a long transaction (a SELECT on comments, left open) from t=2 s to t=2+--long s (14 s);
  - the migration started at t=4 s.
Reported per run: the clients' worst latency (the stall), failed transactions / aborted
clients, and the migration's wall time. Then: the process and container starts of one
`invoke migrate` on the compose path, counted through the seam with a recording compose
shim (this machine has no container engine; the shim runs the same argv locally).

    .venv/bin/python bench/bench_migrate.py [--rows 200000] [--clients 4] [--long 6]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PGBENCH_SCRIPT = """\\set id random(1, {rows})
UPDATE comments SET is_approved = NOT is_approved WHERE id = :id;
SELECT count(*) FROM comments WHERE id = :id;
"""


# --- the compose shim: `bench_migrate.py fake-compose <compose args>` ----------------------
def fake_compose(args: list[str]) -> None:
    """Stand-in for `docker compose`: logs every launch, runs exec/run argv locally."""
    with open(os.environ["FAKE_COMPOSE_LOG"], "a") as log:
        log.write(json.dumps(args[:3] + ["…"]) + "\n")
    if args[:1] == ["ps"]:
        sys.exit(0)
    env = dict(os.environ)
    env.update(
        {
            "PGHOST": env["POSTGRES_HOST"],
            "PGPORT": env["POSTGRES_PORT"],
            "PGPASSWORD": env.get("POSTGRES_PASSWORD", ""),
        }
    )
    env["PATH"] = f"{env['FAKE_PG_BINDIR']}:{env['PATH']}"
    rest = args[1:]
    cwd = None
    while rest and rest[0].startswith("-"):
        flag = rest.pop(0)
        if flag in ("-e", "-v"):
            val = rest.pop(0)
            if flag == "-e":
                k, _, v = val.partition("=")
                env[k] = v
    cmd = rest[1:]  # rest[0] is the service
    if args[0] == "run":  # the agent, in the "backend container"
        env["PYTHONPATH"] = str(ROOT)
        cmd = [sys.executable] + cmd[1:]
        cwd = env["FAKE_BACKEND_DIR"]
    os.chdir(cwd or os.getcwd())
    os.execvpe(cmd[0], cmd, env)


# --- helpers ------------------------------------------------------------------------------
def pgbench(
    cluster, db: str, seconds: int, clients: int, rows: int, logdir: Path
) -> subprocess.Popen:
    script = logdir / "load.sql"
    script.write_text(PGBENCH_SCRIPT.format(rows=rows))
    env = {**os.environ, "PGPASSWORD": cluster.password}
    return subprocess.Popen(
        [
            os.path.join(cluster.bindir, "pgbench"),
            "-n",
            "-h",
            "127.0.0.1",
            "-p",
            str(cluster.port),
            "-U",
            cluster.user,
            "-c",
            str(clients),
            "-j",
            str(min(clients, 2)),
            "-T",
            str(seconds),
            "-f",
            str(script),
            "-l",
            f"--log-prefix={logdir}/tx",
            db,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_latencies(logdir: Path) -> tuple[list[tuple[float, float]], int]:
    """[(end epoch seconds, latency seconds)], failed count, from pgbench's per-transaction logs."""
    out, failed = [], 0
    for f in logdir.glob("tx.*"):
        for line in f.read_text().splitlines():
            parts = line.split()
            if len(parts) < 6:
                continue
            if not parts[2].isdigit():
                failed += 1
                continue
            out.append((int(parts[4]) + int(parts[5]) / 1e6, int(parts[2]) / 1e6))
    return out, failed


def run_scenario(
    cluster, name: str, db: str, migrate_cmd: list[str], env: dict, args, workdir: Path
) -> dict:
    logdir = workdir / f"pgbench-{name.replace(' ', '_')}"
    logdir.mkdir()
    total = 4 + args.long + 8
    bench = pgbench(cluster, db, total, args.clients, args.rows, logdir)
    t0 = time.time()
    long_conn = None

    held = {}

    def open_long():
        nonlocal long_conn
        long_conn = cluster.connect(db, application_name="bench-long-transaction")
        long_conn.autocommit = False
        long_conn.execute("SELECT count(*) FROM comments").fetchone()  # ACCESS SHARE, held
        held["opened"] = round(time.time() - t0, 2)

    def close_long():
        if long_conn is not None:
            long_conn.rollback()
            held["closed"] = round(time.time() - t0, 2)

    threading.Timer(2.0, open_long).start()
    closer = threading.Timer(2.0 + args.long, close_long)
    closer.start()
    time.sleep(4.0)
    m0 = time.time()
    mig = subprocess.run(migrate_cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    m1 = time.time()
    closer.join()
    out, err = bench.communicate()
    if long_conn is not None:
        long_conn.close()
    lat, failed_logged = read_latencies(logdir)
    during = [lt for end, lt in lat if m0 <= end <= m1 + 1]
    failed = next(
        (
            int(ln.split(":")[1].split()[0])
            for ln in out.splitlines()
            if ln.startswith("number of failed transactions")
        ),
        None,
    )
    aborted = err.count("aborted in command")
    return {
        "scenario": name,
        "migrate_exit": mig.returncode,
        "migrate_seconds": round(m1 - m0, 2),
        "worst_latency_s": round(max(lt for _, lt in lat), 3) if lat else None,
        "worst_latency_during_migrate_s": round(max(during), 3) if during else None,
        "transactions": len(lat),
        "failed_transactions": (failed or 0) + failed_logged,
        "aborted_clients": aborted,
        "long_tx_open_s": [held.get("opened"), held.get("closed")],
        "lock_timeout_retries": mig.stdout.count("lock_timeout ("),
        "migrate_started_s": round(m0 - t0, 2),
        "migrate_output": [
            ln for ln in (mig.stdout + mig.stderr).splitlines() if not ln.startswith(("INFO", "$ "))
        ][-12:],
    }


def prepare(cluster, db: str, ini: Path, rows: int) -> dict:
    from tests.fixtures.projects import SAMPLE_HEAD

    cluster.create_database(db)
    env = {**os.environ, **cluster.env(db)}
    subprocess.run(
        [
            str(ROOT / ".venv/bin/alembic") if (ROOT / ".venv/bin/alembic").exists() else "alembic",
            "-c",
            str(ini),
            "upgrade",
            SAMPLE_HEAD,
        ],
        env=env,
        check=True,
        capture_output=True,
    )
    with cluster.connect(db) as conn:
        conn.execute("INSERT INTO users (username, email) VALUES ('u', 'u@x')")
        conn.execute("INSERT INTO posts (title, content, author_id) SELECT 't', 'c', id FROM users")
        conn.execute(
            f"INSERT INTO comments (content, author_name, author_email, post_id) "
            f"SELECT 'comment ' || g, 'n' || g, 'e' || g || '@x', (SELECT id FROM posts) "
            f"FROM generate_series(1, {rows}) g"
        )
        conn.execute("VACUUM ANALYZE comments")
    return env


def count_compose_launches(cluster, ini: Path, workdir: Path) -> dict:
    from tests.fixtures.projects import SAMPLE_HEAD

    db = "bench_compose"
    env = prepare(cluster, db, ini, 1000)
    del SAMPLE_HEAD
    log = workdir / "compose-launches.jsonl"
    env.update(
        {
            "DBOPS_TARGET": "compose",
            "DBOPS_ENV_FILE": str(workdir / "none.env"),
            "DBOPS_COMPOSE": f"{sys.executable} {Path(__file__).resolve()} fake-compose",
            "DBOPS_BACKUP_DIR": str(workdir / "backups-compose"),
            "DBOPS_ALEMBIC_INI": str(ini),
            "DBOPS_BACKEND_ALEMBIC_INI": "alembic.ini",
            "FAKE_COMPOSE_LOG": str(log),
            "FAKE_BACKEND_DIR": str(ini.parent),
            "FAKE_PG_BINDIR": cluster.bindir,
        }
    )
    done = subprocess.run(
        [sys.executable, "-m", "invoke", "migrate"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    launches = [json.loads(ln) for ln in log.read_text().splitlines()] if log.exists() else []
    containers = [x for x in launches if x[0] in ("exec", "run")]
    return {
        "migrate_exit": done.returncode,
        "compose_invocations": len(launches),
        "container_starts": len(containers),
        "container_launches": [" ".join(x[:1]) for x in containers],
        "other": [" ".join(x[:2]) for x in launches if x[0] not in ("exec", "run")],
        "tail": (done.stdout + done.stderr).strip().splitlines()[-2:],
    }


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "fake-compose":
        fake_compose(sys.argv[2:])
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--long", type=int, default=12, help="seconds the long transaction stays open")
    p.add_argument("--lock-timeout", default="2s")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    from dbops import localpg
    from tests.fixtures.projects import make_project

    workdir = Path(tempfile.mkdtemp(prefix="dbops-bench-"))
    cluster = localpg.new_cluster()
    try:
        ini = make_project(workdir, "flag")
        results = []
        env = prepare(cluster, "bench_dbops", ini, args.rows)
        env.update(
            {
                "DBOPS_TARGET": "local",
                "DBOPS_ENV_FILE": str(workdir / "none.env"),
                "DBOPS_BACKUP_DIR": str(workdir / "backups"),
                "DBOPS_ALEMBIC_INI": str(ini),
                "DBOPS_LOCK_TIMEOUT": args.lock_timeout,
                "DBOPS_QUIET": "1",
            }
        )
        results.append(
            run_scenario(
                cluster,
                "invoke migrate",
                "bench_dbops",
                [sys.executable, "-m", "invoke", "migrate"],
                env,
                args,
                workdir,
            )
        )
        env = prepare(cluster, "bench_dbops_nb", ini, args.rows)
        env.update(
            {
                "DBOPS_TARGET": "local",
                "DBOPS_ENV_FILE": str(workdir / "none.env"),
                "DBOPS_BACKUP_DIR": str(workdir / "backups"),
                "DBOPS_ALEMBIC_INI": str(ini),
                "DBOPS_LOCK_TIMEOUT": args.lock_timeout,
                "DBOPS_QUIET": "1",
            }
        )
        results.append(
            run_scenario(
                cluster,
                "invoke migrate --no-backup",
                "bench_dbops_nb",
                [sys.executable, "-m", "invoke", "migrate", "--no-backup"],
                env,
                args,
                workdir,
            )
        )
        env = prepare(cluster, "bench_bare", ini, args.rows)
        alembic = str(ROOT / ".venv/bin/alembic")
        results.append(
            run_scenario(
                cluster,
                "alembic upgrade head",
                "bench_bare",
                [alembic, "-c", str(ini), "upgrade", "head"],
                env,
                args,
                workdir,
            )
        )
        compose = count_compose_launches(cluster, ini, workdir)
    finally:
        cluster.destroy()
    if args.json:
        print(json.dumps({"runs": results, "compose": compose}, indent=2))
        return 0
    print(
        f"rows {args.rows}, {args.clients} pgbench clients (UPDATE+SELECT on comments), long "
        f"transaction open t=2..{2 + args.long} s, migration started t=4 s, "
        f"dbops lock_timeout {args.lock_timeout}"
    )
    print(
        f"{'':28}{'worst stall':>12}{'(during)':>10}{'failed tx':>11}{'aborted':>9}"
        f"{'migrate s':>11}{'retries':>9}{'exit':>6}"
    )
    for r in results:
        print(
            f"{r['scenario']:28}{r['worst_latency_s']:>11.3f}s"
            f"{r['worst_latency_during_migrate_s'] or 0:>9.3f}s"
            f"{r['failed_transactions']:>11}{r['aborted_clients']:>9}{r['migrate_seconds']:>11.2f}"
            f"{r['lock_timeout_retries']:>9}{r['migrate_exit']:>6}"
        )
    print(
        "compose path, one `invoke migrate` (with its pre-migrate backup): "
        f"{compose['container_starts']} container starts "
        f"({', '.join(compose['container_launches'])}), {compose['compose_invocations']} compose "
        f"invocations in all (+{', '.join(compose['other']) or 'none'}); exit "
        f"{compose['migrate_exit']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
