"""Issue 20: the alert rules (docs/dbops-alerts.yml) against their promtool unit tests, and
the series they read as dbops writes them (the run record -> the metrics file)."""

from __future__ import annotations

import shutil
import subprocess
from datetime import UTC, datetime, timedelta

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from dbops import audit, metrics
from tests.conftest import ROOT, offline_settings

RULES = ROOT / "docs" / "dbops-alerts.yml"
RULE_TESTS = ROOT / "docs" / "dbops-alerts.test.yml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (scripts/test installs Debian's prometheus)"
)


@needs_promtool
def test_the_rules_are_valid_and_pass_their_unit_tests():
    check = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    done = subprocess.run(
        [PROMTOOL, "test", "rules", str(RULE_TESTS)], capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_alerts_the_issue_names_each_have_a_unit_test():
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    tested = {a["alertname"] for t in tests for a in t["alert_rule_test"]}
    fired = {a["alertname"] for t in tests for a in t["alert_rule_test"] if a["exp_alerts"]}
    assert {"DbopsBackupFailed", "DbopsNeverDrilled", "DbopsBackupTooOld"} <= fired
    assert {"DbopsMigrateFailed", "DbopsDrillFailed"} <= fired  # a fleet member; a failed drill
    names = {t["name"] for t in tests}
    assert any("interrupted drill" in n for n in names) and any("fleet" in n for n in names)
    rules = {r["alert"] for r in yaml.safe_load(RULES.read_text())["groups"][0]["rules"]}
    assert tested <= rules


def series(settings) -> dict[tuple[str, str], float]:
    text = generate_latest(metrics.registry(settings)).decode()
    return {
        (s.name, s.labels.get("job", "")): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def test_never_is_a_zero_series_and_a_failure_outranks_the_last_success(tmp_path):
    s = offline_settings(tmp_path, DBOPS_BACKUP_DIR=str(tmp_path / "backups"))
    m = series(s)
    for job in ("backup", "drill"):  # present from the first write: "never" is expressible
        assert m[("dbops_job_last_success_timestamp_seconds", job)] == 0
        assert m[("dbops_job_runs_total", job)] == 0
    assert ("dbops_build_info", "") in m
    t0 = datetime.now(UTC) - timedelta(hours=1)
    metrics.record_run(s, "backup", "ok", t0, 2.0)
    metrics.record_run(s, "backup", "failed", t0 + timedelta(minutes=30), 3.5)
    m = series(s)
    assert (
        m[("dbops_job_last_failure_timestamp_seconds", "backup")]
        > m[("dbops_job_last_success_timestamp_seconds", "backup")]
        > 0
    )
    assert m[("dbops_job_runs_total", "backup")] == 2
    assert m[("dbops_job_failures_total", "backup")] == 1
    assert m[("dbops_job_last_duration_seconds", "backup")] == 3.5
    assert m[("dbops_job_last_attempt_timestamp_seconds", "backup")] == pytest.approx(
        (t0 + timedelta(minutes=30)).timestamp()
    )


def test_an_interrupted_run_is_neither_success_nor_failure(tmp_path):
    s = offline_settings(tmp_path, DBOPS_BACKUP_DIR=str(tmp_path / "backups"))
    t0 = datetime.now(UTC) - timedelta(hours=1)
    metrics.record_run(s, "drill", "ok", t0, 10)
    metrics.record_run(s, "drill", "interrupted", t0 + timedelta(minutes=5), 1)
    m = series(s)
    assert m[("dbops_job_interrupted_total", "drill")] == 1
    assert m[("dbops_job_failures_total", "drill")] == 0
    assert m[("dbops_job_last_failure_timestamp_seconds", "drill")] == 0
    assert m[("dbops_job_last_success_timestamp_seconds", "drill")] == pytest.approx(
        t0.timestamp() + 10
    )


def test_point_in_time_recovery_series_come_from_doctor_and_the_audit_record(tmp_path):
    """WAL archiving from doctor's last reading of pg_stat_archiver; the last physical backup
    from its audit record. Absent when PITR is not used (no series that could lie)."""
    s = offline_settings(
        tmp_path,
        DBOPS_BACKUP_DIR=str(tmp_path / "backups"),
        DBOPS_CACHE_DIR=str(tmp_path / "cache"),
    )
    names = {name for name, _ in series(s)}
    assert not any(n.startswith(("dbops_wal_", "dbops_physical_")) for n in names)
    archiving = {
        "name": "archiving",
        "status": "fail",
        "archiver": {
            "last_archived_time": "2026-12-04T01:00:00+00:00",
            "last_failed_time": "2026-12-04T02:00:00+00:00",
            "failed_count": 7,
            "archived_count": 40,
        },
    }
    assert metrics.save_doctor(s, {"checks": [archiving]}) is None
    audit.append(
        s, "backup-physical", result="ok", label="20261204-010000F", size=4096, verified=True
    )
    m = series(s)
    archived = datetime(2026, 12, 4, 1, tzinfo=UTC).timestamp()
    assert m[("dbops_wal_last_archived_timestamp_seconds", "")] == archived
    assert m[("dbops_wal_archive_failing", "")] == 1
    assert m[("dbops_wal_archive_failed_count", "")] == 7
    assert m[("dbops_physical_backup_last_size_bytes", "")] == 4096
    assert m[("dbops_physical_backup_last_verified", "")] == 1
    assert m[("dbops_physical_backup_last_success_timestamp_seconds", "")] > 0
    archiving["archiver"]["last_archived_time"] = "2026-12-04T03:00:00+00:00"  # works again
    metrics.save_doctor(s, {"checks": [archiving]})
    assert series(s)[("dbops_wal_archive_failing", "")] == 0
