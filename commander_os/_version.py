"""The package version, in a module of its own so that both sides can read it cheaply."""

__all__ = ["__version__"]

__version__ = "1.0.0"
