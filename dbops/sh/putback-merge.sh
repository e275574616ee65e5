# dbops put-back after a rollback: merge the backup's rows in one transaction
# shellcheck shell=sh
# The archive on stdin. $1 prelude, $2 postlude, $3 the awk program, $4 the COPY target map
# ("<temp table> <name as pg_restore prints it>" per line), then pg_restore's selection.
# COMMIT is sent only when pg_restore succeeded; awk refuses a COPY it has no target for.
set -u
pre=$1; post=$2; prog=$3; DBOPS_PB_MAP=$4; export DBOPS_PB_MAP; shift 4
{ printf '%s\n' "BEGIN;" "$pre"
  rc=$( { { pg_restore --data-only -f - "$@"; echo $? >&3; } | awk "$prog" >&4; } 3>&1 )
  if [ "$rc" = 0 ]; then
    printf '%s\n' "$post" "COMMIT;"
  else
    echo "dbops:restore_failed" >&2; printf '%s\n' "ROLLBACK;"
  fi
} 4>&1 | psql -X -q -v ON_ERROR_STOP=1 > /dev/null
echo "dbops:psql_exit=$?" >&2
