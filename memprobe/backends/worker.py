"""Entry point of an isolated probe's child process (``python -m memprobe.backends.worker``)."""

import sys

from memprobe.backends.isolated import _child_main

if __name__ == "__main__":
    sys.exit(_child_main())
