"""Evaluation: confidence metrics (pinned definitions), bootstrap intervals, plots."""
