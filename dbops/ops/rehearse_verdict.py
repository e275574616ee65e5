"""The verdict on one rehearsed revision: what readers and writers felt, what was rewritten,
and which known pattern did it, with the safer way to write it.

Numbers come from the rehearsal (dbops/agent/rehearse.py): the probe's longest blocked
stretch per table, and as a floor the time the migration held a lock that conflicts with
readers (ACCESS EXCLUSIVE) or writers (SHARE and stronger) on a table that existed before.
Patterns are named from the statement text AND the evidence (a lock on an existing table, a
rewrite, the rows one transaction wrote), so a CREATE INDEX on a table the revision itself
creates, or a small UPDATE, is not flagged.
"""

from __future__ import annotations

import re

BLOCKS_READS = {"AccessExclusiveLock"}
BLOCKS_WRITES = {"ShareLock", "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock"}
BACKFILL_ROWS = 100_000  # one transaction writing this many rows holds their row locks
BACKFILL_SHARE = 0.5  # ... or this share of a table of at least BACKFILL_MIN_TABLE rows
BACKFILL_MIN_TABLE = 10_000
ALTER_TYPE_SCAN_S = 0.1  # an ALTER … TYPE that neither rewrote nor ran this long was catalog-only

NOT_VALID = re.compile(r"\bNOT\s+VALID\b", re.I)
ALTER = re.compile(r"^\s*ALTER\s+TABLE\b", re.I)


def _p(key, what, regex, safer, needs):
    return {
        "key": key,
        "what": what,
        "regex": re.compile(regex, re.I | re.S),
        "safer": safer,
        "needs": needs,
    }


# needs: "lock" (a blocking lock on an existing table), "rewrite", "backfill", "text"
PATTERNS = [
    _p(
        "volatile_default",
        "ADD COLUMN with a volatile default (every row rewritten)",
        r"\bADD\s+(COLUMN\s+)?.*\bDEFAULT\b",
        "add the column nullable without a default, SET DEFAULT for new rows, backfill in batches "
        "(each batch its own transaction)",
        "rewrite",
    ),
    _p(
        "alter_type",
        "ALTER COLUMN … TYPE (table rewritten or scanned under ACCESS EXCLUSIVE)",
        r"\bALTER\s+(COLUMN\s+)?\S+\s+(SET\s+DATA\s+)?TYPE\b",
        "add a new column of the new type, fill it in batches (and a trigger for new writes), "
        "switch readers, drop the old column in a later release (dbops.online: "
        "op.change_column_type_online)",
        "lock_scan",
    ),
    _p(
        "set_not_null",
        "SET NOT NULL (full scan under ACCESS EXCLUSIVE)",
        r"\bSET\s+NOT\s+NULL\b",
        "ADD CONSTRAINT … CHECK (col IS NOT NULL) NOT VALID; VALIDATE CONSTRAINT in a later "
        "revision; then SET NOT NULL (PostgreSQL 12+ skips the scan)",
        "lock",
    ),
    _p(
        "fk_validated",
        "FOREIGN KEY added without NOT VALID (both tables scanned, writes blocked)",
        r"\bADD\s+(CONSTRAINT\s+\S+\s+)?FOREIGN\s+KEY\b",
        "ADD CONSTRAINT … FOREIGN KEY … NOT VALID, then VALIDATE CONSTRAINT in a later revision",
        "lock_not_valid",
    ),
    _p(
        "check_validated",
        "CHECK added without NOT VALID (full scan under ACCESS EXCLUSIVE)",
        r"\bADD\s+(CONSTRAINT\s+\S+\s+)?CHECK\b",
        "ADD CONSTRAINT … CHECK (…) NOT VALID, then VALIDATE CONSTRAINT in a later revision",
        "lock_not_valid",
    ),
    _p(
        "add_unique",
        "ADD UNIQUE / PRIMARY KEY (index built under a blocking lock)",
        r"\bADD\s+(CONSTRAINT\s+\S+\s+)?(UNIQUE|PRIMARY\s+KEY)\b(?!.*\bUSING\s+INDEX\b)",
        "CREATE UNIQUE INDEX CONCURRENTLY (in autocommit_block), then ADD CONSTRAINT … UNIQUE "
        "USING INDEX (dbops.online: op.add_unique_online)",
        "lock",
    ),
    _p(
        "index_not_concurrent",
        "CREATE INDEX without CONCURRENTLY (writes blocked while it builds)",
        r"^\s*CREATE\s+(UNIQUE\s+)?INDEX\s+(?!CONCURRENTLY\b)",
        "CREATE INDEX CONCURRENTLY inside op.get_context().autocommit_block()",
        "lock",
    ),
    _p(
        "backfill",
        "UPDATE/DELETE of (nearly) every row in one transaction (row locks held to commit)",
        r"^\s*(WITH\b.*?\)\s*)?(UPDATE|DELETE)\b",
        "backfill in batches of a few thousand rows, each committed (autocommit_block, or a "
        "script outside the migration)",
        "backfill",
    ),
    _p(
        "drop_column",
        "DROP COLUMN / DROP TABLE (fast, but the data is gone and running code breaks)",
        r"\bDROP\s+(COLUMN|TABLE)\b",
        "stop using it in the code first (deploy), drop it in a later release, after a backup",
        "text",
    ),
    _p(
        "rename_column",
        "RENAME (fast, but the running code still uses the old name)",
        r"\bRENAME\s+(COLUMN\s+)?\S+\s+TO\b",
        "expand/contract: add the new column (or a view), write both, switch readers, drop the old "
        "one in a later release",
        "text",
    ),
]
SAFER_PRIMARY_KEY = (
    "make the columns NOT NULL online (CHECK … NOT NULL NOT VALID, VALIDATE, SET NOT NULL), "
    "CREATE UNIQUE INDEX CONCURRENTLY (in autocommit_block), then ADD CONSTRAINT … PRIMARY KEY "
    "USING INDEX (dbops.online: op.add_unique_online(…, primary_key=True))"
)
REWRITE = {
    "key": "rewrite",
    "what": "table rewrite (VACUUM FULL, CLUSTER, SET TABLESPACE, …)",
    "safer": "pg_repack / pg_squeeze, which need a primary key or a NOT NULL unique index on "
    "the table (add one first: op.add_unique_online(…, primary_key=True)); without one, a new "
    "table filled in batches and swapped",
}
VALIDATE = re.compile(r"\bVALIDATE\s+CONSTRAINT\s+(\"[^\"]+\"|\S+)", re.I)
VALIDATE_SAME_TX = {
    "key": "validate_same_tx",
    "what": "VALIDATE CONSTRAINT in the transaction that added it NOT VALID (the scan runs under "
    "the ADD's lock, held to commit)",
    "safer": "commit between them: VALIDATE in its own transaction (autocommit_block, or a later "
    "revision; dbops.online: op.add_check_online / op.add_foreign_key_online)",
}


def fmt_s(s: float) -> str:
    return f"{s:.1f} s" if s >= 0.1 else f"{s * 1000:.0f} ms"


def judge(rev: dict) -> dict:
    """Adds to a rehearsed revision: blocks_reads_s, blocks_writes_s, rewrite_bytes, patterns,
    flagged, verdict (one line). Returns the same dict."""
    reads, writes = blocked(rev)
    rewrite_bytes = sum(r["bytes"] for r in rev["rewrites"])
    found = statement_patterns(rev)
    found.update(revision_patterns(rev, found))
    rev.update(
        blocks_reads_s=round(reads, 3),
        blocks_writes_s=round(writes, 3),
        rewrite_bytes=rewrite_bytes,
        patterns=list(found.values()),
        flagged=bool(found) or bool(rev.get("error")),
        verdict=verdict_line(rev, reads, writes, rewrite_bytes, list(found)),
    )
    return rev


def blocked(rev: dict) -> tuple[float, float]:
    """How long reads and writes of existing tables were blocked (seconds): the longest
    lock held in a mode that blocks them, or what the probes measured, whichever is longer."""
    holds = [lk for lk in rev["locks"] if not lk["new_table"]]
    reads_lock = max((lk["held_s"] for lk in holds if lk["mode"] in BLOCKS_READS), default=0.0)
    writes_lock = max((lk["held_s"] for lk in holds if lk["mode"] in BLOCKS_WRITES), default=0.0)
    probe = rev.get("probe") or {}
    reads = max([reads_lock] + [p["read_blocked_s"] for p in probe.values()])
    writes = max([writes_lock, reads] + [p["write_blocked_s"] for p in probe.values()])
    return reads, writes


def applies(p: dict, st: dict, rev: dict, rows: dict) -> bool:
    """Whether pattern ``p`` (its regex already matched) is what statement ``st`` did."""
    text, needs = st["sql"], p["needs"]
    strong = [lk for lk in st["locks"] if not lk["new_table"] and lk["mode"] in BLOCKS_WRITES]
    if needs == "rewrite" and not st["rewrites"]:
        return False
    if needs in ("lock", "lock_scan") and not (
        strong and ALTER.match(text) or strong and text.lstrip()[:6].upper() == "CREATE"
    ):
        return False
    if needs == "lock_scan" and not (
        st["rewrites"] or (st.get("seconds") or 0) >= ALTER_TYPE_SCAN_S
    ):
        return False  # catalog-only (varchar(n) -> varchar(m > n), varchar -> text)
    if needs == "lock_not_valid" and (NOT_VALID.search(text) or not strong):
        return False
    if needs == "backfill" and not _big_write(st, rev, rows):
        return False
    if needs == "text" and not ALTER.match(text) and not re.match(r"^\s*DROP\s+TABLE", text, re.I):
        return False
    return not (p["key"] == "rename_column" and _swapped(st, rev["statements"]))


def statement_patterns(rev: dict) -> dict[str, dict]:
    """The patterns the revision's statements show, the first statement of each."""
    rows = rev.get("table_rows") or {}
    found: dict[str, dict] = {}
    for st in rev["statements"]:
        text = st["sql"]
        for p in PATTERNS:
            if p["key"] in found or not p["regex"].search(text):
                continue
            if not applies(p, st, rev, rows):
                continue
            safer = p["safer"]
            if p["key"] == "add_unique" and re.search(r"\bPRIMARY\s+KEY\b", text, re.I):
                safer = SAFER_PRIMARY_KEY
            found[p["key"]] = {
                "key": p["key"],
                "what": p["what"],
                "safer": safer,
                "statement": st["index"],
                "sql": text[:160],
            }
    return found


def revision_patterns(rev: dict, found: dict[str, dict]) -> dict[str, dict]:
    """Patterns of the revision as a whole: a VALIDATE in the transaction that added the
    constraint; a table rewrite no statement pattern explains."""
    more: dict[str, dict] = {}
    same_tx = _validate_same_tx(rev["statements"])
    if same_tx is not None:
        more["validate_same_tx"] = {
            **VALIDATE_SAME_TX,
            "statement": same_tx["index"],
            "sql": same_tx["sql"][:160],
        }
    if rev["rewrites"] and not ({"volatile_default", "alter_type"} & set(found)):
        first = rev["rewrites"][0]["statement"]
        st = rev["statements"][first] if rev["statements"] else {"sql": ""}
        more["rewrite"] = {**REWRITE, "statement": first, "sql": st["sql"][:160]}
    return more


def verdict_line(
    rev: dict, reads: float, writes: float, rewrite_bytes: int, names: list[str]
) -> str:
    """One line: what it blocks and for how long, what it rewrites, the patterns' names."""
    parts = []
    if reads >= 0.05 and writes - reads < 0.05:
        parts.append(f"blocks reads and writes for {fmt_s(max(reads, writes))}")
    else:
        if reads >= 0.05:
            parts.append(f"blocks reads for {fmt_s(reads)}")
        if writes >= 0.05:
            parts.append(f"blocks writes for {fmt_s(writes)}")
    if rewrite_bytes:
        parts.append(f"rewrites {rewrite_bytes / 1e6:.0f} MB")
    if rev.get("error"):
        parts.insert(0, f"FAILED: {rev['error']}")
    verdict = "; ".join(parts) if parts else "safe"
    if names:
        verdict = f"{verdict} ({', '.join(names)})" if parts else "fast, but " + ", ".join(names)
    return verdict


RENAME_COLUMN = re.compile(r'\bRENAME\s+(?:COLUMN\s+)?"?(\w+)"?\s+TO\s+"?(\w+)"?', re.I)


def _swapped(st: dict, statements: list[dict]) -> bool:
    """A rename that is half of a swap in one transaction (the old name given back by another
    rename, or the new name freed by one: expand/contract's switch): running code still finds
    a column by the name it uses."""
    m = RENAME_COLUMN.search(st["sql"])
    if not m or st.get("tx") is None:
        return False
    return any(
        (o := RENAME_COLUMN.search(other["sql"]))
        and (o.group(2) == m.group(1) or o.group(1) == m.group(2))
        for other in statements
        if other is not st and other.get("tx") == st["tx"] and not other.get("autocommit")
    )


def _validate_same_tx(statements: list[dict]) -> dict | None:
    """The first VALIDATE CONSTRAINT run in the transaction whose earlier statement added that
    constraint NOT VALID under a lock blocking writes on an existing table."""
    for i, st in enumerate(statements):
        m = VALIDATE.search(st["sql"])
        if not m or st.get("autocommit") or st.get("tx") is None:
            continue
        name = re.escape(m.group(1).strip('"'))
        added = re.compile(rf'\bADD\s+CONSTRAINT\s+"?{name}"?\s.*\bNOT\s+VALID\b', re.I | re.S)
        for before in statements[:i]:
            if (
                before.get("tx") == st["tx"]
                and not before.get("autocommit")
                and added.search(before["sql"])
                and any(
                    lk["mode"] in BLOCKS_WRITES and not lk["new_table"] for lk in before["locks"]
                )
            ):
                return st
    return None


def _big_write(st: dict, rev: dict, rows: dict) -> bool:
    if st.get("autocommit") or not st.get("rows"):
        return False
    if rev.get("max_transaction_rows", 0) >= BACKFILL_ROWS:
        return True
    written = [
        lk["relation"]
        for lk in st["locks"]
        if lk["mode"] == "RowExclusiveLock" and not lk["new_table"]
    ]
    return any(
        rows.get(t, 0) >= BACKFILL_MIN_TABLE and st["rows"] >= BACKFILL_SHARE * rows[t]
        for t in written
    ) or (not written and st["rows"] >= BACKFILL_ROWS)


def over(rev: dict, limits: dict) -> list[str]:
    """The thresholds a judged revision exceeds (limits: reads_s, writes_s, rewrite_mb)."""
    out = []
    if rev["blocks_reads_s"] > limits["reads_s"]:
        out.append(
            f"blocks reads for {fmt_s(rev['blocks_reads_s'])} > DBOPS_MAX_BLOCK_READS "
            f"{fmt_s(limits['reads_s'])}"
        )
    if rev["blocks_writes_s"] > limits["writes_s"]:
        out.append(
            f"blocks writes for {fmt_s(rev['blocks_writes_s'])} > DBOPS_MAX_BLOCK_WRITES "
            f"{fmt_s(limits['writes_s'])}"
        )
    if rev["rewrite_bytes"] / 1e6 > limits["rewrite_mb"]:
        out.append(
            f"rewrites {rev['rewrite_bytes'] / 1e6:.0f} MB > DBOPS_MAX_REWRITE_MB "
            f"{limits['rewrite_mb']:g}"
        )
    return out
