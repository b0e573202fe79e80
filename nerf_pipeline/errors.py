"""Errors that are the user's to fix (bad params, bad data, unreachable services).

Stages catch ``UserError`` at the top (``runtime/cli.py``) and print its message as one paragraph, with no
traceback, and exit with status 2. Anything else is a bug and keeps its traceback.

A base module: it imports nothing of the package, so every module, ``config.py`` included, may raise these.
"""


class UserError(Exception):
    """A problem with the user's input: params, data files, URLs, paths, services."""


class ConfigError(UserError):
    """params.yaml is missing a key, has an unknown one, or a value of the wrong type or range."""


class DataError(UserError):
    """A data file is missing, unreadable, or does not hold what a stage expects."""
