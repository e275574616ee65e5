-- A restore drill check (DBOPS_DRILL_CHECKS): runs on the restored copy, must return true.
-- Add your own: one file per invariant, e.g. "SELECT count(*) > 0 FROM users;".
SELECT count(*) >= 1 FROM alembic_version;
