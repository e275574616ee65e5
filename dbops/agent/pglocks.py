"""PostgreSQL's table lock modes, which of them conflict, and the modes a migration's SQL takes.

The conflict table is the one in the PostgreSQL manual ("Table-Level Lock Modes"). The modes a
statement takes are read from alembic's offline SQL of the pending revisions: the statement kinds
below map to the mode the manual gives them; any other ALTER TABLE is taken as ACCESS EXCLUSIVE
(conservative: some subcommands take less). Pure functions, stdlib only (host and agent).
"""

from __future__ import annotations

import re

from dbops.agent import version_table

MODES = (
    "AccessShareLock",
    "RowShareLock",
    "RowExclusiveLock",
    "ShareUpdateExclusiveLock",
    "ShareLock",
    "ShareRowExclusiveLock",
    "ExclusiveLock",
    "AccessExclusiveLock",
)
# RowExclusiveLock or stronger: what writing, altering or dropping a table takes
WRITE_MODES = frozenset(MODES[MODES.index("RowExclusiveLock") :])
READ_MODES = frozenset(MODES) - WRITE_MODES  # AccessShareLock, RowShareLock (SELECT … FOR …)

_ALL = set(MODES)
CONFLICTS: dict[str, set[str]] = {
    "AccessShareLock": {"AccessExclusiveLock"},
    "RowShareLock": {"ExclusiveLock", "AccessExclusiveLock"},
    "RowExclusiveLock": {
        "ShareLock",
        "ShareRowExclusiveLock",
        "ExclusiveLock",
        "AccessExclusiveLock",
    },
    "ShareUpdateExclusiveLock": {
        "ShareUpdateExclusiveLock",
        "ShareLock",
        "ShareRowExclusiveLock",
        "ExclusiveLock",
        "AccessExclusiveLock",
    },
    "ShareLock": {
        "RowExclusiveLock",
        "ShareUpdateExclusiveLock",
        "ShareRowExclusiveLock",
        "ExclusiveLock",
        "AccessExclusiveLock",
    },
    "ShareRowExclusiveLock": {
        "RowExclusiveLock",
        "ShareUpdateExclusiveLock",
        "ShareLock",
        "ShareRowExclusiveLock",
        "ExclusiveLock",
        "AccessExclusiveLock",
    },
    "ExclusiveLock": _ALL - {"AccessShareLock"},
    "AccessExclusiveLock": _ALL,
}


def conflicts(held: str, wanted: str) -> bool:
    """True when a session holding ``held`` makes a request for ``wanted`` wait."""
    return held in CONFLICTS.get(wanted, _ALL)


_NAME = r'((?:"[^"]+"|[\w$]+)(?:\.(?:"[^"]+"|[\w$]+))?)'
_LOCK_MODE = re.compile(
    r"\bIN\s+(ACCESS\s+SHARE|ROW\s+SHARE|ROW\s+EXCLUSIVE|SHARE\s+UPDATE\s+EXCLUSIVE"
    r"|SHARE\s+ROW\s+EXCLUSIVE|SHARE|EXCLUSIVE|ACCESS\s+EXCLUSIVE)\s+MODE",
    re.IGNORECASE,
)
# (pattern, mode) for the table a statement names right after the pattern; first match wins.
_STATEMENTS = [
    (
        r"CREATE\s+(?:UNIQUE\s+)?INDEX\s+CONCURRENTLY\s+(?:IF\s+NOT\s+EXISTS\s+)?\S+\s+ON\s+(?:ONLY\s+)?",
        "ShareUpdateExclusiveLock",
    ),
    (
        r"CREATE\s+(?:UNIQUE\s+)?INDEX\s+(?:IF\s+NOT\s+EXISTS\s+)?\S+\s+ON\s+(?:ONLY\s+)?",
        "ShareLock",
    ),
    (r"ALTER\s+TABLE\s+(?:IF\s+EXISTS\s+)?(?:ONLY\s+)?", "AccessExclusiveLock"),
    (r"DROP\s+TABLE\s+(?:IF\s+EXISTS\s+)?", "AccessExclusiveLock"),
    (r"TRUNCATE\s+(?:TABLE\s+)?(?:ONLY\s+)?", "AccessExclusiveLock"),
    (r"LOCK\s+(?:TABLE\s+)?(?:ONLY\s+)?", None),  # the mode it names
    (r"(?:INSERT\s+INTO|UPDATE\s+(?:ONLY\s+)?|DELETE\s+FROM\s+(?:ONLY\s+)?)", "RowExclusiveLock"),
    (r"DROP\s+INDEX\s+(?:CONCURRENTLY\s+)?(?:IF\s+EXISTS\s+)?", "index:AccessExclusiveLock"),
]
_COMPILED = [(re.compile(r"^\s*" + p + _NAME, re.IGNORECASE), m) for p, m in _STATEMENTS]
_CREATED = re.compile(
    r"^\s*CREATE\s+(?:UNLOGGED\s+)?TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?" + _NAME, re.IGNORECASE
)
_REFERENCES = re.compile(r"\bREFERENCES\s+" + _NAME, re.IGNORECASE)


def _bare(name: str) -> str:
    return name.split(".")[-1].strip('"')


def statements(sql: str) -> list[str]:
    return [
        s.strip() for s in re.split(r";\s*\n", sql) if s.strip() and not s.strip().startswith("--")
    ]


def modes_for_sql(sql: str) -> dict[str, list[str]]:
    """{table: [modes]} the statements take on tables that exist before them (a table the SQL
    creates is nobody else's yet). ``index:NAME`` keys: DROP INDEX, whose table the caller looks
    up. alembic_version is left out."""
    created: set[str] = set()
    need: dict[str, set[str]] = {}
    for stmt in statements(sql):
        m = _CREATED.match(stmt)
        if m:
            created.add(_bare(m.group(1)))
        else:
            for pattern, mode in _COMPILED:
                m = pattern.match(stmt)
                if not m:
                    continue
                name = _bare(m.group(1))
                if mode is None:
                    lm = _LOCK_MODE.search(stmt)
                    mode = (
                        "".join(w.capitalize() for w in lm.group(1).split()) + "Lock"
                        if lm
                        else "AccessExclusiveLock"
                    )
                if mode.startswith("index:"):
                    need.setdefault(f"index:{name}", set()).add(mode.split(":", 1)[1])
                else:
                    need.setdefault(name, set()).add(mode)
                break
        for ref in _REFERENCES.findall(stmt):  # a foreign key locks the table it points at too
            need.setdefault(_bare(ref), set()).add("ShareRowExclusiveLock")
    return {
        t: sorted(m, key=MODES.index)
        for t, m in sorted(need.items())
        if t not in created and not version_table.is_it(t)
    }
