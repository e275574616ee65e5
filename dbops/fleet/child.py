"""``python -m dbops.fleet.child VERB FLAGS…``: how the fleet runner starts ``invoke VERB`` on one
database. Before exec'ing invoke it asks the kernel for SIGINT when the runner dies
(PR_SET_PDEATHSIG, kept across exec), so a runner killed with SIGKILL still interrupts its
children, which clean up as after Ctrl-C. (Done here, not in a preexec_fn: the runner starts
children from threads, where a preexec_fn is not safe.)"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGINT, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the runner's own interrupt handling remains
        pass
    runner = os.environ.pop("DBOPS_FLEET_RUNNER_PID", None)
    if runner and str(os.getppid()) != runner:  # the runner died before prctl: do not start
        sys.exit(130)
    os.execv(sys.executable, [sys.executable, "-m", "invoke", *argv])


if __name__ == "__main__":
    main(sys.argv[1:])
