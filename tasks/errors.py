"""Errors that mean "the input is wrong": retrying cannot help, so tasks fail at once."""


class BadInput(ValueError):
    """Invalid configuration or data; the message names the field, row or expectation."""


class ConfigError(BadInput):
    """A configuration value is invalid; the message names the field."""


# A stage process exits with this code on BadInput, so its runner can tell bad input
# (fail now) from a crash (retry).
EXIT_BAD_INPUT = 3
