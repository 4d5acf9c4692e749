"""Preference datasets for text-to-image alignment: Pick-a-Pic v2, OpenImagePreferences, HPDv2, folders/JSONL, and a synthetic toy world with an exact oracle reward; caching and dataset builders."""

from pref_data.__about__ import __version__

__all__ = ["__version__"]
