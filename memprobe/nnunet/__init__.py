"""nnU-Net v2 support: its training step, its networks' topology, and a measured planner.

Only the planner and the networks need the optional extra (``pip install 'memprobe[nnunet]'``);
the step and the topology rule are reimplemented here and need neither.
"""
