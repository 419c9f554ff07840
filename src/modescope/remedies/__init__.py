"""Remedies for mode collapse: prompt strategies, Verbalized Sampling, base-guided decoding, and the grid of them
a frontier measures."""
