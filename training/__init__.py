"""Offline side: synthetic data, loading, fitting, calibration, export, evaluation."""
