"""Entry point of an isolated probe's child process (``python -m memprobe.backends.worker``)."""

import os
import sys

from memprobe.backends.isolated import run_child

if __name__ == "__main__":
    code = run_child()
    # The result is on stdout: end now, even if user code left a non-daemon thread running
    # (Python would wait for it, and the parent would take a finished probe for a hung one).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
