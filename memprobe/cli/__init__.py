"""The `memprobe` command: one module per command, and how results are shown. Top layer."""
