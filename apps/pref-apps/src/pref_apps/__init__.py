"""pref-apps: the pref-train, pref-sample and pref-eval command-line programs.

They discover recipes, samplers and evaluators through entry points registered by installed pref
packages, so this package depends on pref-core only and never imports a method package directly.
"""

from pref_apps.__about__ import __version__

__all__ = ["__version__"]
