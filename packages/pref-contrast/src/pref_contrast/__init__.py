"""Diff-contrast (Diffusion-RPO): diffusion preference alignment via relative text-image contrast."""

from pref_contrast.__about__ import __version__

__all__ = ["__version__"]
