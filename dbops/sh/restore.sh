# dbops restore: read the archive from stdin into pg_restore
# shellcheck shell=sh
# Runs next to the server; the archive arrives on stdin. $1 mode (check|restore|restore-data:
# schema and data without the post-data section, for a partial backup whose foreign keys may
# point at rows it does not hold) $2 format (custom|directory) $3 target database (restore)
# $4 jobs.
set -u
mode=$1; fmt=$2; dbname=$3; jobs=$4
if [ "$mode" = restore-data ]; then set -- --section=pre-data --section=data; else set --; fi
if [ "$fmt" = custom ] && [ "$jobs" -le 1 ]; then
  if [ "$mode" = check ]; then exec pg_restore -f /dev/null; fi
  exec pg_restore --exit-on-error "$@" -d "$dbname"
fi
find "${TMPDIR:-/tmp}" -maxdepth 1 -name 'dbops-restore.*' -mmin +1440 -exec rm -rf {} + 2>/dev/null
tmp=$(mktemp -d "${TMPDIR:-/tmp}/dbops-restore.XXXXXX") || exit 70
trap 'rm -rf "$tmp"' EXIT
trap 'exit 143' INT TERM HUP
trap 'exit 141' PIPE
if [ "$fmt" = custom ]; then
  cat > "$tmp/archive.dump" || exit 71; src="$tmp/archive.dump"
else
  # either failing is the same error: the archive cannot be unpacked
  # shellcheck disable=SC2015
  mkdir "$tmp/d" && tar -x -C "$tmp/d" || { echo "dbops: the tar archive is unreadable" >&2; exit 71; }
  src="$tmp/d"
fi
if [ "$mode" = check ]; then pg_restore -f /dev/null "$src"; exit $?; fi
pg_restore --exit-on-error "$@" -j "$jobs" -d "$dbname" "$src"
