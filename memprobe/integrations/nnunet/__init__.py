"""nnU-Net v2: its training step, networks, predictor, dataset fingerprints and a measured planner.

``plan_run.plan_dataset`` is ``memprobe nnunet plan``: nnU-Net's planner with measured need, each
topology it visits answered by ``topology_sources`` (a calibration, a prediction of its network's
topology family, or a calibration made on the spot).

Only the planner and the networks need the optional extra (``pip install 'memprobe[nnunet]'``);
the step and the predictor are reimplemented here and need neither. Topology names live in the
architecture catalogue (`memprobe.core.archs.nnunet_topology`).
"""
