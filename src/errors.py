"""The one base class of the errors a user fixes by changing a setting or an input file."""


class UsageError(Exception):
    """A setting or an input file is wrong; the message names it and how to fix it, in one paragraph.
    ``src.train`` and ``src.eval`` stop on it with exit status 2, before anything is overwritten."""


class ConfigError(UsageError, ValueError):
    """One or more settings are out of range or do not fit together."""


class DatasetNotFoundError(UsageError, FileNotFoundError):
    """A dataset's files are not where the settings say and could not be downloaded."""
