# dbops touched set: the live schema into a scratch database
# shellcheck shell=sh
# $1 scratch database. The live database's schema (no data, no owners, no grants) into it.
set -u
scratch=$1
{ pg_dump --schema-only --no-owner --no-privileges --no-publications --no-subscriptions;
  echo "dbops:dump_exit=$?" >&2; } |
  psql -X -q -v ON_ERROR_STOP=1 -d "$scratch" > /dev/null
echo "dbops:load_exit=$?" >&2
