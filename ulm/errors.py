"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class UlmError(Exception):
    """Bad input (file, key, shape): the message names what is wrong and what was expected."""
