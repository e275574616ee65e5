"""One module per operation. Each takes Settings, talks through the seam and the agent,
and raises OpsError (message, database state, next command) on failure."""

from dbops import agent_client
from dbops.ops.failures import explain

agent_client.EXPLAIN = explain  # an agent's failure in doctor's words, for every operation
