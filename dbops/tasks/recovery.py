"""Diagnosis and recovery: doctor, recover. (Issue 5.)"""

from __future__ import annotations

TASKS: list = []
