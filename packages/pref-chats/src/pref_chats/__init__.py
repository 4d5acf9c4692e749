"""CHATS: Combining Human-Aligned optimization and Test-time Sampling (two-model preference training and proxy-prompt guided sampling)."""

from pref_chats.__about__ import __version__

__all__ = ["__version__"]
