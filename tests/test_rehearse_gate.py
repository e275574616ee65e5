"""migrate's gate on a stored rehearsal that did not get through every pending revision
(one failed on the copy, the rest never ran): in production that is over the limits too,
since nothing is known about what the unrun revisions lock (real PostgreSQL)."""

from __future__ import annotations

import json

from dbops.agent_client import Agent
from dbops.config import load_settings
from dbops.ops import rehearse as rehearse_op
from dbops.ops.rehearse_verdict import judge
from tests.conftest import ROOT

INITIAL = "d90082bb79a0"


def test_gate_refuses_an_incomplete_rehearsal_in_production(invoke, ops_env, tmp_path):
    env = {**ops_env, "DBOPS_CACHE_DIR": str(tmp_path / "cache")}
    assert invoke("migrate", f"--to={INITIAL}", "--no-backup", env=env).returncode == 0
    settings = load_settings(ROOT, environ=env)
    with Agent(settings) as agent:
        pre = agent.call("migrate.preflight", to="head")
    pending = pre["pending"]
    assert len(pending) >= 2
    failed = judge(
        {
            "revision": pending[0]["revision"],
            "seconds": 2.0,
            "error": "lock timeout",
            "locks": [],
            "statements": [],
            "rewrites": [],
            "probe": {},
        }
    )
    rehearse_op.save(
        settings,
        {
            "key": "incomplete",
            "database": settings.database,
            "from": pre["current"],
            "revision_hashes": {p["revision"]: p["sha256"] for p in pending},
            "source": {"file": str(tmp_path / "x.dump")},
            "revisions": [failed],
            "predicted_seconds": 2.0,
            "complete": False,
            "finished_at": "2026-01-01T00:00:00+00:00",
        },
    )
    prod = {**env, "ENVIRONMENT": "production"}
    r = invoke("migrate", "--no-backup", env=prod)
    assert r.returncode == 1 and "over the production limits" in r.stderr, r.stdout + r.stderr
    assert "failed in the rehearsal" in r.stderr and "not rehearsed" in r.stderr
    with Agent(settings) as agent:  # refused before anything ran
        assert agent.call("migrate.preflight", to="head")["current"] == [INITIAL]
    r = invoke("migrate", "--no-backup", "--accept-risk=rehearsed by hand", env=prod)
    assert r.returncode == 0, r.stderr
    audit = [json.loads(x) for x in open(tmp_path / "backups" / "audit.jsonl")]
    assert [a["reason"] for a in audit if a["action"] == "accept-risk"] == ["rehearsed by hand"]
