"""The library's configuration errors: bad settings that a user fixes, not bugs to debug.

The ``dense-lightning`` command prints these (and ``NotEquivalentError``) as one line and
exits with status 2; every other exception keeps its traceback.
"""

from __future__ import annotations

__all__ = ["ConfigurationError"]


class ConfigurationError(ValueError):
    """A setting that cannot work, with a message that names it and says how to fix it.

    A ``ValueError`` so that code catching bad values keeps working.
    """
