"""The bottom layer: configuration values, measurement types, units, errors and checks.

Nothing here imports from another memprobe package except the architecture catalogue (`archs`).
"""
