"""The one exception type a user can cause."""


class ModescopeError(Exception):
    """A problem with the user's input; the message says what to change.

    The CLI prints it without a traceback and exits with code 2.
    """
