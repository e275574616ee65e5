"""Expected fingerprints per revision on a scratch database, and the match. (Issue 5.)"""
