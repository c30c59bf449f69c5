"""The one error type of the board's loaders."""


class BootError(Exception):
    """A VM cannot start with the files and settings it was given.

    The message is one line meant for the user: which file, what is wrong.
    """
