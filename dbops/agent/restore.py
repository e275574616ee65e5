"""DB side of a restore: scratch databases, checks, the swap by rename. (Issue 3.)"""
