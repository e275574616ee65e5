"""invoke revision -m MESSAGE [--online]: alembic's autogenerate against the live database,
through the agent (where alembic and the models are), with the online operations of
dbops.online written for big tables (dbops/agent/online_revision.py). Changes no database."""

from __future__ import annotations

from pathlib import Path

from dbops.agent_client import call_once
from dbops.config import Settings
from dbops.errors import OpsError
from dbops.ops.output import Out, print_line


def host_file(settings: Settings, relpath: str) -> Path:
    """Where the revision goes in this checkout when the agent ran elsewhere (a container)."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    if settings.alembic_ini is None:
        raise OpsError(
            "the revision was generated in the backend container, and no alembic.ini was "
            "found here to put it next to the others. No file was written.",
            next_command="DBOPS_ALEMBIC_INI=path/to/alembic.ini invoke revision -m '…'",
        )
    return Path(ScriptDirectory.from_config(Config(str(settings.alembic_ini))).dir) / relpath


def new_revision(
    settings: Settings, message: str, *, online: bool = False, out: Out = print_line
) -> dict:
    if not message.strip():
        raise OpsError("revision needs a message", next_command="invoke revision -m 'add x'")
    res = call_once(
        settings,
        "revision.autogenerate",
        message=message,
        online=online,
        min_rows=settings.get("DBOPS_ONLINE_MIN_ROWS"),
    )
    path = Path(res["path"])
    if settings.target != "local":
        path = host_file(settings, res["relpath"])
        if path.exists():
            raise OpsError(f"{path} exists already: no file was written")
        path.write_text(res["text"])
    for r in res["online"]:
        out(f"online: {r['table']} (~{r['rows']:,} rows): op.{r['plain']} -> op.{r['online']}")
    out(f"wrote {path} (revision {res['revision']}); read it before `invoke migrate`")
    return {"revision": res["revision"], "path": str(path), "online": res["online"]}
