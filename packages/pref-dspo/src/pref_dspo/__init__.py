"""DSPO: Direct Score Preference Optimization for diffusion model alignment."""

from pref_dspo.__about__ import __version__

__all__ = ["__version__"]
