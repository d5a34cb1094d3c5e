"""Reproducible overhead figures for the capture gateway, side by side with its peers (issue 6)."""
