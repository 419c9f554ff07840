"""Engines that ask a backend its two questions efficiently: prefix-tree expansion and batched decoding."""
