"""DB side of a backup: versions, database size, an exported snapshot for pg_dump and
the per-table row counts read in that same snapshot. (Issue 3.)"""
