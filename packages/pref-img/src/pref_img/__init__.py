"""IMG: calibrating diffusion models via implicit multimodal guidance."""

from pref_img.__about__ import __version__

__all__ = ["__version__"]
