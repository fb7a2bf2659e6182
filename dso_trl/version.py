"""The package version: a leaf module, so what records it in saved files imports no package back."""

__version__ = "0.1.0"
