"""Plots and HTML renderers."""
