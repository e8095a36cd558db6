"""Exceptions that the command line reports as a one-line message, without a traceback."""


class Data2Vec2Error(Exception):
    """Base class for errors reported to the user without a traceback."""


class ConfigError(Data2Vec2Error):
    """An invalid or inconsistent configuration value (preset, YAML file or command-line flag)."""


class DataError(Data2Vec2Error):
    """Input data that is missing, unreadable, corrupt or not prepared yet."""


class TrainingError(Data2Vec2Error):
    """Training cannot go on: a NaN loss, a collapsed representation, a bad checkpoint."""
