"""Invoke task modules, one per domain; ``tasks.py`` joins them into one namespace.

Tasks are thin: declare flags and help, call one operation in ``dbops.ops``, print.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

from invoke import Exit

from dbops.config import Settings, load_settings
from dbops.errors import OpsError


def settings(c) -> Settings:
    cfg = dict(c.config.get("dbops", {}) or {})
    project_dir = cfg.pop("project_dir", None) or Path.cwd()
    return load_settings(project_dir, cfg)


def guarded(fn):
    """Turn an OpsError into its message, the database state, the next command and exit 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except OpsError as exc:
            print(exc.render(), file=sys.stderr, flush=True)
            raise Exit(code=exc.exit_code) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise Exit(code=130) from None

    return wrapper
