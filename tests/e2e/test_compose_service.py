"""The `dbops` compose service (profile ops) on real containers: two instances with a
5-second backup schedule and a drill every 9 seconds; backups and a drill happen, one backup
per tick, the metrics file shows them, `stop` (SIGTERM) exits 0 and leaves nothing partial,
the JSON log carries no password."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dbops import catalog
from dbops.config import load_settings
from dbops.ops import schedule
from tests.conftest import ROOT

pytestmark = pytest.mark.e2e


def compose(stack, *args: str, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    argv = [*stack.env.get("DBOPS_COMPOSE", "docker compose").split(), "--profile", "ops", *args]
    return subprocess.run(
        argv,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=timeout,
    )


def metric_values(path: Path) -> dict[str, float]:
    if not path.exists():
        return {}
    return {
        s.name: s.value
        for f in text_string_to_metric_families(path.read_text())
        for s in f.samples
        if not s.labels.get("operation") and not s.labels.get("check")
    }


def scheduled_backups(settings, *, verified_only: bool = True) -> list[dict]:
    return [
        b
        for b in catalog.list_backups(settings)
        if b["reason"] == "scheduled" and (b["verified"] or not verified_only)
    ]


def test_the_service_backs_up_and_drills_once_per_tick(stack, tmp_path):
    assert stack.invoke("migrate").returncode == 0
    checks = tmp_path / "checks"
    checks.mkdir()
    (checks / "version.sql").write_text("SELECT count(*) = 1 FROM alembic_version;\n")
    metrics_dir = tmp_path / "metrics"
    env = {
        **stack.env,
        "DBOPS_BACKUP_SCHEDULE": "*/5 * * * * *",
        "DBOPS_DRILL_SCHEDULE": "*/9 * * * * *",
        "DBOPS_DRILL_CHECKS": str(checks),
        "DBOPS_METRICS_DIR": str(metrics_dir),
    }
    prom = metrics_dir / "dbops.prom"
    settings = load_settings(ROOT, environ=stack.env)
    try:
        up = compose(stack, "up", "-d", "--scale", "dbops=2", "dbops", env=env)
        assert up.returncode == 0, up.stderr
        end = time.monotonic() + 240
        while time.monotonic() < end:
            # The folder is shared with the other e2e tests: count the service's own backups,
            # not the metric (which also counts the earlier manual and pre-migrate ones).
            m = metric_values(prom)
            if m.get("dbops_drill_last_success") == 1 and len(scheduled_backups(settings)) >= 2:
                break
            time.sleep(2)
        else:
            logs = compose(stack, "logs", "--no-color", "dbops", env=env).stdout
            pytest.fail(
                "no backups and drill in the metrics within 240 s: "
                f"{metric_values(prom)}\n{logs[-4000:]}"
            )
        stop = compose(stack, "stop", "-t", "120", "dbops", env=env)
        assert stop.returncode == 0, stop.stderr
        ps = compose(stack, "ps", "dbops", env=env).stdout
        assert ps.count("Exit 0") + ps.lower().count("exited (0)") == 2, ps
        logs = compose(stack, "logs", "--no-color", "dbops", env=env).stdout
    finally:
        compose(stack, "rm", "-f", "-s", "dbops", env=env)
    backups = scheduled_backups(settings, verified_only=False)
    assert len(backups) >= 2 and all(b["verified"] for b in backups), backups
    ticks = [schedule.parse_iso(b["created_at"]) for b in backups]
    floors = [t.replace(second=t.second - t.second % 5, microsecond=0) for t in ticks]
    assert len(floors) == len(set(floors)), ticks  # two instances, one backup per tick
    assert not [p for p in settings.backup_dir.iterdir() if p.name.endswith(".partial")]
    events = [json.loads(ln.split("| ", 1)[1]) for ln in logs.splitlines() if "| {" in ln]
    assert {"scheduled-backup", "scheduled-drill"} <= {
        e["task"] for e in events if e["event"] == "summary"
    }
    assert "skipped" in logs  # the second instance saw the tick taken
    assert stack.password not in logs
