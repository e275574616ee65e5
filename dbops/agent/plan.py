"""Rollback / stamp planning: resolve a revision spec, list the downgrade steps and what
each would drop. (Issue 4.)"""
