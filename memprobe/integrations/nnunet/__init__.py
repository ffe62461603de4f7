"""nnU-Net v2: its training step, networks, predictor, dataset fingerprints and a measured planner.

Only the planner and the networks need the optional extra (``pip install 'memprobe[nnunet]'``);
the step and the predictor are reimplemented here and need neither. Topology names live in the
architecture catalogue (`memprobe.core.archs.nnunet_topology`).
"""
