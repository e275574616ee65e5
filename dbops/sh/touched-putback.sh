# dbops put-back: a partial backup's rows in one transaction
# shellcheck shell=sh
# $1 prelude SQL, $2 postlude SQL, then pg_restore's selection (-n S -t T …).
# The archive arrives on stdin. ONE psql session, ONE transaction: COMMIT is sent only when
# pg_restore succeeded, and the postlude's row-count checks raise before it otherwise.
set -u
pre=$1; post=$2; shift 2
{ printf '%s\n' "BEGIN;" "$pre"
  if pg_restore --data-only -f - "$@"; then
    printf '%s\n' "$post" "COMMIT;"
  else
    echo "dbops:restore_failed" >&2; printf '%s\n' "ROLLBACK;"
  fi
} | psql -X -q -v ON_ERROR_STOP=1 > /dev/null
echo "dbops:psql_exit=$?" >&2
