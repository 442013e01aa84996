"""User-facing errors: one clear line that names the file or key and says what to do."""


class VastError(Exception):
    """A mistake in the user's input (config, paths, media, annotations).

    The command-line entry point prints ``str(error)`` on one line and exits with status 2,
    without a traceback; library callers can catch it like any exception.
    """


class ConfigError(VastError):
    """A config file or command-line override is invalid."""


class DataError(VastError):
    """An annotation file or media file is missing or malformed."""


class MediaError(DataError):
    """A media file cannot be decoded (unreadable, truncated, no stream, too short)."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")
