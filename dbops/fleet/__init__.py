"""invoke fleet: one schema history, many databases.

``plan`` reads fleet.toml (listed databases, and discovery queries run on a server) into an
ordered list of members, each with the environment that points the ordinary per-database
tasks at it. ``state`` is the run's state file (written atomically; what --resume reads).
``run`` starts ``invoke <verb>`` once per member, in canary / wave order, at most --parallel at
a time, and stops starting new work at the failure threshold. Every member's operation is the
ordinary one (its own advisory lock, verified backup, audit record and verification): the
fleet only decides the order and collects the results. See docs/scaling.md.
"""
