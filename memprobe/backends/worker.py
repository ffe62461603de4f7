"""Entry point of an isolated probe's child process (``python -m memprobe.backends.worker``)."""

import sys

from memprobe.backends.isolated import run_child

if __name__ == "__main__":
    sys.exit(run_child())
