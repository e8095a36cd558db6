"""Exceptions that the command line reports as a one-line message, without a traceback."""


class Data2Vec2Error(Exception):
    """Base class for errors reported to the user without a traceback."""


class ConfigError(Data2Vec2Error):
    """An invalid or inconsistent configuration value (preset, YAML file or command-line flag)."""


class DataError(Data2Vec2Error):
    """Input data that is missing, unreadable, corrupt or not prepared yet."""


class TrainingError(Data2Vec2Error):
    """Training cannot go on: a NaN loss, a collapsed representation, a bad checkpoint."""


class Interrupted(KeyboardInterrupt):
    """Training stopped on SIGINT (Ctrl-C) or SIGTERM (a cluster scheduler) after saving a
    checkpoint at the current update. A KeyboardInterrupt, so that code above stops as on Ctrl-C."""

    def __init__(self, message: str, signal_number: int):
        super().__init__(message)
        self.signal_number = signal_number
