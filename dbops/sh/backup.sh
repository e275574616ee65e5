# dbops backup: pg_dump on the snapshot, read back in full as it streams
# shellcheck shell=sh
# Runs next to the server (db container, or this machine): sh -c "$(cat backup.sh)" dbops-backup …
#   $1 snapshot  $2 server major  $3 custom|directory  $4 jobs  $5 compression (auto|pg_dump -Z)
#   $6 --lock-wait-timeout for pg_dump's ACCESS SHARE locks (fail, rather than queue forever)
#   $7… more pg_dump options (a touched backup: --exclude-table-data for every untouched table)
# The archive goes to stdout; dbops:key=value markers and pg tools' messages to stderr.
set -u
snap=$1; server_major=$2; fmt=$3; jobs=$4; z=$5; lockwait=$6
shift 6  # the rest: more pg_dump options (a touched backup's --exclude-table-data=…)
v=$(pg_dump --version 2>&1) || { echo "dbops:error=pg_dump not found: $v" >&2; exit 69; }
echo "dbops:pg_dump_version=$v" >&2
# the major version without another process: "pg_dump (PostgreSQL) 15.4 (Debian …)" -> 15
case "$v" in "pg_dump (PostgreSQL) "[0-9]*) major=${v#pg_dump (PostgreSQL) }; major=${major%%[!0-9]*} ;; *) major= ;; esac
if [ -z "$major" ] || [ "$major" -lt "$server_major" ]; then
  echo "dbops:too_old=${major:-unknown}" >&2; exit 68
fi
if [ "$z" = auto ]; then
  z=1
  if [ "$major" -ge 16 ]; then
    # zstd:1 if this build has it (checked without connecting anywhere), else gzip level 1
    probe=$(pg_dump -Z zstd:1 -s -f /dev/null -d "host=/nonexistent-dbops-probe connect_timeout=1" 2>&1)
    case "$probe" in *"does not support"*|*"not supported"*|*"invalid"*) ;; *connect*) z=zstd:1 ;; esac
  fi
fi
echo "dbops:compression=$z" >&2
# leftovers of a dump whose shell was killed outright (a day old: no backup runs that long here)
# (in the background: it never touches this run's folder, and the dump need not wait for it)
find "${TMPDIR:-/tmp}" -maxdepth 1 -name 'dbops-backup.*' -mmin +1440 -exec rm -rf {} + >/dev/null 2>&1 &
tmp=$(mktemp -d "${TMPDIR:-/tmp}/dbops-backup.XXXXXX") || { echo "dbops:error=mktemp failed" >&2; exit 70; }
trap 'rm -rf "$tmp"' EXIT
# PIPE too: if the host dies, writing a marker to stderr must still end in the cleanup
# INT/TERM/HUP (the host stopping it, or dying: PR_SET_PDEATHSIG): end the whole process
# group (pg_dump, tee, pg_restore) at once, then clean up. The dump runs in the background and
# is waited for, so the trap runs while it waits (a foreground command would delay it).
trap 'trap "" INT TERM HUP; kill -TERM 0 2>/dev/null; exit 143' INT TERM HUP
trap 'exit 141' PIPE
mkfifo "$tmp/verify" || exit 70
if [ "$fmt" = custom ]; then
  pg_restore -f /dev/null < "$tmp/verify" & vpid=$!
  { pg_dump --snapshot="$snap" --lock-wait-timeout="$lockwait" -Fc -Z "$z" "$@"; echo "dbops:dump_exit=$?" >&2; } |
    { tee "$tmp/verify"; echo "dbops:stream_exit=$?" >&2; } &
  wait $!
  wait $vpid; echo "dbops:verify_exit=$?" >&2
else
  pg_dump --snapshot="$snap" --lock-wait-timeout="$lockwait" -Fd -j "$jobs" -Z "$z" --no-sync -f "$tmp/d" "$@" &
  wait $!; rc=$?; echo "dbops:dump_exit=$rc" >&2
  [ "$rc" -eq 0 ] || exit 1
  echo "dbops:dumped" >&2
  # The full read and the transfer overlap: both read the same files (page cache).
  pg_restore -f /dev/null "$tmp/d" & vpid=$!
  tar -C "$tmp/d" -cf - . & wait $!; echo "dbops:stream_exit=$?" >&2
  wait $vpid; echo "dbops:verify_exit=$?" >&2
fi
