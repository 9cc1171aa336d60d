"""User-facing errors: the CLI prints their message in one line and exits non-zero, no traceback."""


class UserError(Exception):
    """A problem the user can fix (bad value, missing file); the message names it and what is allowed."""


class ConfigError(UserError):
    """An invalid experiment config, preset or override."""


class DataError(UserError):
    """A dataset that cannot be found, verified or read."""
