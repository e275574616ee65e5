"""invoke drill's record through lifecycle.Operation (issue 18): every outcome recorded, with
the operation's id, in-process through the ops' channels."""

from __future__ import annotations

import pytest

from dbops import audit
from dbops.errors import OpsError
from dbops.ops import drill as drill_op


def test_a_drill_with_nothing_to_drill_is_recorded_failed_and_changes_nothing(settings):
    notes: list[str] = []
    with pytest.raises(OpsError) as err:
        drill_op.drill(settings, warn=notes.append)
    assert err.value.message.startswith("nothing to drill: ")
    assert err.value.next_command == "invoke backup"
    [rec] = [r for r in audit.read(settings) if r["action"] == "drill"]
    assert rec["result"] == "failed" and rec["op_id"] and rec["backup"] is None
    assert rec["error"] == err.value.message and rec["duration_s"] >= 0
    assert drill_op.last_drill(settings) == rec


def test_a_bad_checks_folder_is_refused_and_recorded_before_anything_is_restored(ops_env, tmp_path):
    from dbops.config import load_settings
    from tests.conftest import ROOT

    settings = load_settings(
        ROOT, environ={**ops_env, "DBOPS_DRILL_CHECKS": str(tmp_path / "missing")}
    )
    with pytest.raises(OpsError) as err:
        drill_op.drill(settings, warn=lambda _line: None)
    assert "is not a folder" in err.value.message and err.value.state == "unchanged"
    [rec] = [r for r in audit.read(settings) if r["action"] == "drill"]
    assert rec["result"] == "failed" and "is not a folder" in rec["error"]
