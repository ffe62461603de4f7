"""The HTML report: what a measured step, a calibration and a plan look like on one page."""
