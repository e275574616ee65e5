"""A password with every special character works end to end, and no form of it — raw,
percent-encoded (quote, quote_plus, SQLAlchemy's URL), %-doubled for configparser, JSON-escaped —
appears in any output, record, event, metrics file, manifest or notify ping (issue 19 item 7,
issue 23 item 4)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from psycopg import sql

from dbops.config import secret_forms

PASSWORD = "p%4@:/#'\" \\x%%end ü"
WRONG = "w%0@:/#'\" \\rong"


@pytest.fixture
def pings():
    bodies: list[str] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            n = int(self.headers.get("Content-Length") or 0)
            bodies.append(self.path + " " + self.rfile.read(n).decode(errors="replace"))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", bodies
    server.shutdown()


def _forms(secret: str) -> list[str]:
    return [*secret_forms(secret), json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)]


def test_a_password_with_every_special_character_works_and_never_shows(
    invoke, db_conn, database, tmp_path, pings
):
    role = f"{database}_secret"
    db_conn.execute(
        sql.SQL("CREATE ROLE {} LOGIN SUPERUSER PASSWORD {}").format(
            sql.Identifier(role), sql.Literal(PASSWORD)
        )
    )
    db_conn.commit()
    url, bodies = pings
    folder = tmp_path / "backups"
    env = {
        "POSTGRES_USER": role,
        "POSTGRES_PASSWORD": PASSWORD,
        "DBOPS_LOG_FORMAT": "json",
        "DBOPS_METRICS_FILE": str(tmp_path / "metrics.prom"),
        "DBOPS_NOTIFY_URL": url,
        "DBOPS_BACKUP_DIR": str(folder),
        "DBOPS_CACHE_DIR": str(tmp_path / "cache"),
    }
    outputs = []
    for argv, ok in (
        (["migrate"], True),
        (["backup"], True),
        (["doctor"], None),
        (["migrate", "--to=nonexistent"], False),
        (["drill"], True),
    ):
        done = invoke(*argv, env=env)
        outputs.append(done.stdout + done.stderr)
        if ok is not None:
            assert (done.returncode == 0) is ok, (argv, done.stdout, done.stderr)
    failed = invoke("backup", env={**env, "POSTGRES_PASSWORD": WRONG})
    assert failed.returncode == 1 and "authentication failed" in failed.stderr
    outputs.append(failed.stdout + failed.stderr)

    files = [p for p in [*folder.rglob("*"), *(tmp_path / "cache").rglob("*")] if p.is_file()]
    files.append(tmp_path / "metrics.prom")
    texts = outputs + bodies + [p.read_bytes().decode(errors="replace") for p in files]
    assert any("audit.jsonl" in str(p) for p in files) and bodies, (files, bodies)
    assert any(p.name.endswith(".manifest.json") for p in files)
    for secret in (PASSWORD, WRONG):
        for form in _forms(secret):
            for i, text in enumerate(texts):
                assert form not in text, (form, i, text[:2000])


def test_the_agent_masks_every_form_before_anything_leaves_it(monkeypatch):
    from sqlalchemy import URL

    from dbops.agent.__main__ import _masked

    monkeypatch.setenv("POSTGRES_USER", "u")
    monkeypatch.setenv("POSTGRES_DB", "d")
    monkeypatch.setenv("POSTGRES_PASSWORD", PASSWORD)
    url = URL.create("postgresql+psycopg", "u", PASSWORD, "h", 5432, "d")
    rendered = url.render_as_string(hide_password=False)
    text = _masked(f"could not parse {rendered!r}; {rendered.replace('%', '%%')}; {PASSWORD}")
    for form in secret_forms(PASSWORD):
        assert form not in text, (form, text)
    assert text.count("****") == 3
