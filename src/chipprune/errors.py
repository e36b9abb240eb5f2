"""The one exception type chipprune raises for problems a user can fix."""


class ChipPruneError(Exception):
    """A user-facing error: the message says what is wrong and what to do.

    The CLI prints it without a traceback and exits with status 2.
    """
