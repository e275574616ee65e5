# Sourced by scripts/test and scripts/quickstart: a virtual environment with the
# project installed, and PostgreSQL binaries found (installed when root and missing).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

apt_install() {
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || return 1
  say "installing $* (apt-get)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >/dev/null 2>&1 \
    || { DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null 2>&1 \
         && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >/dev/null; }
}

find_pg_bindir() {
  if [ -n "${DBOPS_PG_BINDIR:-}" ] && [ -x "$DBOPS_PG_BINDIR/initdb" ]; then echo "$DBOPS_PG_BINDIR"; return; fi
  if command -v pg_config >/dev/null && [ -x "$(pg_config --bindir)/initdb" ]; then pg_config --bindir; return; fi
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5 -n | tail -1
}

PY="${PYTHON:-python3}"
VENV="${DBOPS_VENV:-$ROOT/.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  "$PY" -m venv "$VENV" || die "cannot create a virtual environment with $PY (install python3-venv)"
fi
STAMP="$VENV/.dbops-installed"
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ] || [ backend/requirements.txt -nt "$STAMP" ]; then
  say "installing the project and its test tools into $VENV"
  if ! "$VENV/bin/python" -m pip install -e '.[test]' -r backend/requirements.txt >"$VENV/pip.log" 2>&1 \
     || ! "$VENV/bin/python" -c 'import alembic, sqlmodel, psycopg, invoke, dotenv, pytest, pytest_alembic'; then
    tail -20 "$VENV/pip.log" >&2
    die "installing the Python packages failed (full log: $VENV/pip.log)"
  fi
  touch "$STAMP"
fi
export PATH="$VENV/bin:$PATH"

PG_BINDIR="$(find_pg_bindir || true)"
if [ -z "$PG_BINDIR" ]; then
  apt_install postgresql postgresql-client || true
  PG_BINDIR="$(find_pg_bindir || true)"
fi
[ -n "$PG_BINDIR" ] || die "no PostgreSQL server binaries (initdb) found: install PostgreSQL or set DBOPS_PG_BINDIR"
export DBOPS_PG_BINDIR="$PG_BINDIR"
if [ "$(id -u)" = 0 ] && ! id "${DBOPS_PG_RUNAS:-postgres}" >/dev/null 2>&1; then
  say "creating system user ${DBOPS_PG_RUNAS:-postgres} (PostgreSQL refuses to run as root)"
  useradd -r -M -s /usr/sbin/nologin "${DBOPS_PG_RUNAS:-postgres}"
fi
