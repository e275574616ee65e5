"""The `dbops` console command: the same tasks as this bundle's `invoke`, run on the Alembic
project of the working directory (pip install dbops into the project's own environment).

    cd my-project && dbops migrate          # alembic.ini found here or in a folder above
    dbops --ini db/alembic.ini current      # or named (relative: from the working directory)

The project folder is the nearest folder, from the working directory upward, holding `.env` or
`alembic.ini`: `.env` is read there, and backups, caches and the squawk accept file default to
paths under it. With no alembic.ini found and none named, every task that needs one refuses and
names the folders it searched — never the sample app of the dbops checkout.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from invoke import Argument, Collection, Program

from dbops.config import load_settings

MARKERS = (".env", "alembic.ini")


def project_folder(start: Path) -> Path:
    """The nearest folder from ``start`` upward holding .env or alembic.ini; ``start`` when
    none does (then nothing is found, and a task that needs alembic.ini says so)."""
    start = start.resolve()
    for folder in (start, *start.parents):
        if any((folder / marker).is_file() for marker in MARKERS):
            return folder
    return start


def header(project_dir: Path) -> str | None:
    """One line naming the project, its alembic.ini and the database the task works on;
    None when the settings cannot be read yet (the task itself then says why, once)."""
    try:
        s = load_settings(project_dir)
    except Exception:  # the task reports a bad setting as its error line
        return None
    ini = s.alembic_ini or "none found (the task needing it will refuse)"
    where = f"{s.host}:{s.port}" if s.target == "local" else s.target
    return f"dbops: project {project_dir} · alembic.ini {ini} · database {s.database} ({where})"


class DbopsProgram(Program):
    """invoke's Program in bundled-namespace mode, plus -c/--ini (invoke's own -c, the
    collection, does not exist in this mode)."""

    def core_args(self) -> list[Argument]:
        return [
            *super().core_args(),
            Argument(
                names=("ini", "c"),
                help="the project's alembic.ini (default: found from the working directory "
                "upward; DBOPS_ALEMBIC_INI)",
            ),
        ]

    def execute(self) -> None:
        ini = self.args.ini.value
        if ini:
            # highest precedence, and inherited by the processes a task starts (fleet, serve)
            os.environ["DBOPS_ALEMBIC_INI"] = str(Path(ini).expanduser().resolve())
        project_dir = Path(self.namespace.configuration()["dbops"]["project_dir"])
        quiet = os.environ.get("DBOPS_LOG_FORMAT", "").lower() == "json"
        if self.tasks and not quiet:
            line = header(project_dir)
            if line:
                print(line, file=sys.stderr, flush=True)
        super().execute()


def namespace(project_dir: Path) -> Collection:
    from dbops.tasks import namespace as bundle_namespace

    ns = bundle_namespace()
    ns.configure({"dbops": {"project_dir": str(project_dir)}})
    return ns


def main(argv: list[str] | None = None) -> None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version("dbops")
    except PackageNotFoundError:  # run from a checkout: python -m dbops.cli
        installed = "checkout"
    program = DbopsProgram(
        name="dbops",
        binary="dbops",
        version=installed,
        namespace=namespace(project_folder(Path.cwd())),
    )
    program.run(argv)


if __name__ == "__main__":
    main()
