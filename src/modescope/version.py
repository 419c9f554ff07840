"""The package version, in a module of its own that imports nothing, so that views and the suite runner can
record it without importing the top-level package. pyproject.toml's [project] version is the truth; a unit
test keeps the two equal."""

__version__ = "0.1.0"
