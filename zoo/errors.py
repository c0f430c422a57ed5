"""Errors that are the user's to fix: the CLI prints them without a traceback."""
from zoo.registry import UnknownNameError


class ConfigError(ValueError):
    """A suite file or option is wrong; the message names the key and the allowed values."""


class DataError(ValueError):
    """Input data is missing or malformed; the message names the file and the fix."""


class IncompatibleError(ValueError):
    """A backbone/head/input combination that cannot be assembled."""


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights are neither on disk nor downloadable; the message says where to put them."""


class RunFailed(RuntimeError):
    """A run that cannot finish, with the sentence its results row shows as the reason."""


class StorageError(OSError):
    """The output folder cannot take more: read-only, full, or not ours to write."""


def check_keys(given: dict, allowed, where: str) -> None:
    """A ConfigError for the first key of ``given`` not in ``allowed``, naming the closest allowed
    one and all of them: a misspelt key must not be ignored."""
    import difflib

    for key in given:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), [str(a) for a in allowed], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{where}: unknown key {key!r}{hint}; allowed keys: {', '.join(map(str, allowed))}")


STORAGE_ERRNOS = {28: "no space left on the device", 30: "the file system is read-only",
                  13: "permission denied", 122: "the disk quota is exceeded"}


def storage_problem(error: BaseException) -> str | None:
    """What is wrong with the output folder, if ``error`` is a storage fault; else None."""
    return STORAGE_ERRNOS.get(getattr(error, "errno", None))


USER_ERRORS = (UnknownNameError, ConfigError, DataError, IncompatibleError, WeightsUnavailableError,
               FileNotFoundError, StorageError)
