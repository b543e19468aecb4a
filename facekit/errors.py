"""The one exception type the CLI turns into a one-line message instead of a traceback."""


class UserError(Exception):
    """Bad input from the user (file, shape, option): the message names the problem and the fix."""
