"""Sliding-window inference: measure it, fit its formula, plan ``sw_batch_size`` and where to stitch.

``config`` (what one inference is) and ``formula``, ``calibration``, ``plan`` need no torch;
``run`` (measuring) and ``calibrate`` (measuring, then fitting) import it.
"""
