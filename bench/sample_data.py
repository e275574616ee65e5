"""The sample app's schema at head, filled to a size: one builder for the benchmarks that need
production-sized data behind the sample revisions (bench_premigrate, bench_rehearse)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from dbops import localpg
from tests.fixtures.projects import HEADER, REVS, SAMPLE_HEAD, make_project


def build(
    cluster: localpg.Cluster, env: dict, db: str, gb: float, ini: Path, *, tags: int = 0
) -> int:
    """Create ``db`` at the sample head with ~``gb`` GB of comments (and ``tags`` tags);
    returns pg_database_size."""
    cluster.create_database(db)
    subprocess.run(
        [str(Path(sys.executable).parent / "alembic"), "-c", str(ini), "upgrade", SAMPLE_HEAD],
        env=env,
        check=True,
        capture_output=True,
        cwd=ini.parent,
    )
    # ~205 bytes per comment on disk, heap + indexes (measured: 10M rows gave 2.06 GB)
    rows = int(gb * 1e9 / 205) + 1
    with cluster.connect(db) as conn:
        conn.execute("INSERT INTO users (username, email) VALUES ('u', 'u@x')")
        conn.execute(
            "INSERT INTO posts (title, content, author_id) SELECT 'p' || g, 'c', 1 "
            "FROM generate_series(1, 1000) g"
        )
        if tags:
            conn.execute(
                "INSERT INTO tags (name) SELECT 'Tag' || g FROM generate_series(1, %s) g", [tags]
            )
        step = 2_000_000
        for start in range(0, rows, step):
            conn.execute(
                "INSERT INTO comments (content, author_name, author_email, post_id) "
                "SELECT md5(g::text) || md5((g + 1)::text) || md5((g + 2)::text), 'a', "
                "'a' || g || '@x', 1 + g %% 1000 FROM generate_series(%s::int, %s::int) g",
                [start + 1, min(rows, start + step)],
            )
        conn.execute("VACUUM ANALYZE")
        conn.execute("CHECKPOINT")
        return conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]


def project(out: Path, *names: str, rev: str, message: str, body: str, patch_models: bool) -> Path:
    """A fresh copy of the sample project in out/project with the fixture revisions ``names``
    and one more revision ``rev`` (``body``: its upgrade/downgrade) on top; its alembic.ini."""
    shutil.rmtree(out / "project", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    ini = make_project(out, *names, patch_models=patch_models)
    down = REVS[names[-1]].rev if names else SAMPLE_HEAD
    (ini.parent / "alembic" / "versions" / f"{rev}_bench.py").write_text(
        HEADER.format(message=message, rev=rev, down=down, down_repr=repr(down), labels="None")
        + body
    )
    return ini
