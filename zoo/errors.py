"""Errors that are the user's to fix: the CLI prints them without a traceback."""
from zoo.registry import UnknownNameError


class ConfigError(ValueError):
    """A suite file or option is wrong; the message names the key and the allowed values."""


class DataError(ValueError):
    """Input data is missing or malformed; the message names the file and the fix."""


def _user_errors():
    from zoo.factory import IncompatibleError
    from zoo.weights import WeightsUnavailableError

    return (UnknownNameError, ConfigError, DataError, IncompatibleError, WeightsUnavailableError,
            FileNotFoundError)




USER_ERRORS = _user_errors()
