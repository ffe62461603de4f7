"""Analytic memory formulas: their terms, their fit to measurements, calibrated coefficients."""
