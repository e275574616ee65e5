"""What `invoke psql -c` accepts: exactly one SQL statement, no psql meta-command.

psql's own ``-c`` runs every statement of a string (``select 1; drop table t``) and a
backslash command (``\\! rm -rf``) runs on the machine psql is on. ``one_statement`` splits
the text the way the server's lexer does — single quotes (``''`` inside), E'' strings
(backslash escapes), double-quoted identifiers, dollar quotes (``$$`` and ``$tag$``),
``--`` comments and nested ``/* */`` comments — and refuses anything but one statement. The
one exception is that statement wrapped in a transaction, ``BEGIN [READ WRITE]; …; COMMIT``
(what doctor prints to lift a read-only default), which is still one change.
"""

from __future__ import annotations

import re
import shlex

from dbops.errors import ConfigError

DOLLAR_TAG = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$")
BEGIN = re.compile(r"(begin|start\s+transaction)\b[\sa-z,]*", re.IGNORECASE)
COMMIT = re.compile(r"(commit|end)(\s+(work|transaction))?", re.IGNORECASE)


class SqlTextError(ValueError):
    pass


def split(sql: str) -> list[str]:
    """The statements of ``sql`` (comments kept, empty ones dropped); a backslash outside
    quotes (a psql meta-command) or an unterminated quote/comment raises SqlTextError."""
    statements: list[str] = []
    start = i = 0
    n = len(sql)
    while i < n:
        ch = sql[i]
        if ch == "'":
            escapes = i > 0 and sql[i - 1] in "eE" and (i < 2 or not _word(sql[i - 2]))
            i = _end_of_quote(sql, i, "'", backslash=escapes)
        elif ch == '"':
            i = _end_of_quote(sql, i, '"', backslash=False)
        elif ch == "$" and (i == 0 or not _word(sql[i - 1])) and (m := DOLLAR_TAG.match(sql, i)):
            end = sql.find(m.group(0), m.end())
            if end < 0:
                raise SqlTextError(f"unterminated dollar quote {m.group(0)}")
            i = end + len(m.group(0))
        elif sql.startswith("--", i):
            nl = sql.find("\n", i)
            i = n if nl < 0 else nl + 1
        elif sql.startswith("/*", i):
            i = _end_of_block_comment(sql, i)
        elif ch == "\\":
            raise SqlTextError(
                "a psql meta-command (backslash) is not SQL: invoke psql runs SQL only"
            )
        elif ch == ";":
            statements.append(sql[start:i])
            i += 1
            start = i
        else:
            i += 1
    statements.append(sql[start:])
    return [s.strip() for s in statements if _has_code(s)]


def one_statement(sql: str) -> str:
    """``sql`` itself when it is one statement (or one wrapped in BEGIN …; COMMIT), else a
    ConfigError saying what was found; nothing has run."""
    try:
        parts = split(sql)
    except SqlTextError as exc:
        raise ConfigError(f"invoke psql -c: {exc}; nothing was run") from None
    body = parts
    if len(parts) == 3 and BEGIN.fullmatch(_code(parts[0])) and COMMIT.fullmatch(_code(parts[2])):
        body = parts[1:2]
    if not body:
        raise ConfigError("invoke psql -c: no SQL statement given; nothing was run")
    if len(body) > 1:
        firsts = ", ".join(repr(_code(p)[:30]) for p in body[:4])
        raise ConfigError(
            f"invoke psql -c runs one SQL statement, this is {len(body)}: {firsts}; "
            "nothing was run",
            next_command="invoke psql -c " + shlex.quote(body[0]) + "   # then the next one alone",
        )
    return sql


def _word(ch: str) -> bool:
    return ch.isalnum() or ch in "_$"


def _end_of_quote(sql: str, i: int, q: str, *, backslash: bool) -> int:
    j = i + 1
    while j < len(sql):
        if backslash and sql[j] == "\\":
            j += 2
            continue
        if sql[j] == q:
            if sql.startswith(q * 2, j):  # '' or "" inside
                j += 2
                continue
            return j + 1
        j += 1
    kind = "identifier" if q == '"' else "string"
    raise SqlTextError(f"unterminated quoted {kind}")


def _end_of_block_comment(sql: str, i: int) -> int:
    depth, j = 0, i
    while j < len(sql):
        if sql.startswith("/*", j):
            depth, j = depth + 1, j + 2
        elif sql.startswith("*/", j):
            depth, j = depth - 1, j + 2
            if depth == 0:
                return j
        else:
            j += 1
    raise SqlTextError("unterminated /* comment")


def _code(statement: str) -> str:
    """The statement without its comments (for the wrapper test and messages)."""
    out, i = [], 0
    while i < len(statement):
        if statement.startswith("--", i):
            nl = statement.find("\n", i)
            i = len(statement) if nl < 0 else nl + 1
        elif statement.startswith("/*", i):
            i = _end_of_block_comment(statement, i)
        elif statement[i] in "'\"$":
            out.append(statement[i:])  # quoted text: kept as is (not a wrapper anyway)
            break
        else:
            out.append(statement[i])
            i += 1
    return " ".join("".join(out).split())


def _has_code(statement: str) -> bool:
    return bool(_code(statement))
