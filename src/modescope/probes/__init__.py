"""Experiments: each module takes a spec and models and returns a typed result."""
