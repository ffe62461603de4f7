"""From a calibration to a plan: memory need, overheads and margins, size searches, exports."""
