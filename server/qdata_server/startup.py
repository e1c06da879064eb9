"""Why the server refuses to start: a bad setting (ConfigError) or anything else found at start.

Library code raises these and never exits; only the command line (`__main__.py`, and serve.py's
process entries, which are the command line's) turns them into an exit status and a message on
stderr. This module imports nothing of the server's, so every layer can raise them.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration variable is missing or malformed."""


class StartupError(Exception):
    """The server cannot start; str(exc) is the whole one-line message the command line prints.

    The command line exits with status 1 on it (a ConfigError found while reading the
    environment exits 2; see __main__.py).
    """
