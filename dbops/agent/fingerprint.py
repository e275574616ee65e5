"""A canonical, deterministic description of a schema read from pg_catalog. (Issue 5.)"""
