"""What every benchmark here does the same way: open (or reuse, with --keep) a throwaway
cluster and destroy it afterwards, build the environment `invoke` runs in, run a command and
fail loudly, and time variants side by side in alternating order (2 cores: a ratio is only
a figure when both sides ran in the same conditions, one after the other)."""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from dbops import localpg


@contextlib.contextmanager
def cluster(keep: str | None) -> Iterator[tuple[localpg.Cluster, bool]]:
    """A production-like cluster (fsync on): the one kept in ``keep`` when it holds one
    (started if stopped; yields reused=True), else a new one, destroyed at the end unless kept."""
    reuse = bool(keep) and (Path(keep) / "cluster.json").exists()
    c = localpg.load(keep) if reuse else localpg.new_cluster(keep, fast=False)
    if reuse and not (c.data / "postmaster.pid").exists():
        c.start(fast=False)
    try:
        yield c, reuse
    finally:
        if not keep:
            c.destroy()


def invoke_env(c: localpg.Cluster, db: str, out: Path, **extra: str) -> dict[str, str]:
    """The caller's environment without any database or DBOPS_ setting, pointed at ``db`` on
    ``c`` on the local target; backups in out/backups, retention off, quiet."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("POSTGRES_", "DBOPS_", "PG", "DATABASE_URL"))
    }
    env.update(c.env(db))
    env.update(
        {
            "DBOPS_TARGET": "local",
            "DBOPS_ENV_FILE": str(out / "no.env"),
            "DBOPS_BACKUP_DIR": str(out / "backups"),
            "DBOPS_BACKUP_RETENTION": "off",
            "DBOPS_QUIET": "1",
            **extra,
        }
    )
    return env


def run(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, str]:
    """Run ``argv``; (wall seconds, stdout). A failure ends the benchmark with its output."""
    t = time.monotonic()
    done = subprocess.run(
        argv, env=env, cwd=cwd, capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
    took = time.monotonic() - t
    if done.returncode != 0:
        raise SystemExit(f"failed: {argv}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return took, done.stdout


def alternate(
    variants: dict[str, Callable[[], float]],
    runs: int,
    *,
    after_round: Callable[[], None] | None = None,
) -> dict[str, float]:
    """Run every variant once per round, rotating (and every other round reversing) the order;
    print each timing; return the medians."""
    results: dict[str, list[float]] = {k: [] for k in variants}
    names = list(variants)
    for r in range(runs):
        order = names[r % len(names) :] + names[: r % len(names)]
        if r % 2:
            order.reverse()
        for name in order:
            took = variants[name]()
            results[name].append(took)
            print(f"round {r + 1}: {name:22} {took:6.2f} s", flush=True)
        if after_round:
            after_round()
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"\nmedians of {runs} alternating runs:")
    for k, v in med.items():
        print(f"  {k:22} {v:6.2f} s")
    return med


def database_size(c: localpg.Cluster, db: str) -> int:
    with c.connect(db) as conn:
        return conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]


def parser(doc: str, *, gb: float) -> argparse.ArgumentParser:
    """The options every data-size benchmark takes: --gb, --runs, --keep."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--gb", type=float, default=gb)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--keep", help="cluster folder to create or reuse (default: a temporary one)")
    return p
