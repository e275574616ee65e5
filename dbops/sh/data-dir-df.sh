# dbops rehearse: the free space of the server's data directory
# shellcheck shell=sh
d=$(psql -XAtqc 'SHOW data_directory') || exit 2
df -Pk "$d" | tail -n 1
