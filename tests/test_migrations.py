"""The sample history itself: single head, up/down consistency (pytest-alembic; `invoke check`
runs the stairway), models match the migrations."""

from __future__ import annotations

from pytest_alembic.tests import (  # noqa: F401  (collected as tests)
    test_model_definitions_match_ddl,
    test_single_head_revision,
    test_up_down_consistency,
    test_upgrade,
)

EXPECTED_SLUGS = [
    "initial_schema",
    "add_comments_table",
    "add_user_profile_fields",
    "add_performance_indexes",
    "add_tag_stats_table",
    "add_user_sessions_table",
]


def test_history_is_the_seeds_six_exercises_in_order(alembic_runner):
    revs = [r for r in alembic_runner.history.revisions if r not in ("base", "heads")]
    assert len(revs) == 6
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_runner.config.make_alembic_config(None))
    files = [script.get_revision(r).path.rsplit("/", 1)[-1] for r in revs]
    for slug, name in zip(EXPECTED_SLUGS, files, strict=True):
        assert slug in name, files
