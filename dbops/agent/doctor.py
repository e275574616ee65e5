"""DB-side facts for invoke doctor: invalid indexes, sessions, locks, pg_dump running. (Issue 5.)"""
