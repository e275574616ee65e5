"""One module per operation. Each takes Settings, talks through the seam and the agent,
and raises OpsError (message, database state, next command) on failure."""
