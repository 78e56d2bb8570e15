"""Errors a user can cause. The command line prints them as one sentence, never a traceback."""


class UserError(Exception):
    """A problem with the user's input (a file, an option, a checkpoint) explained in one sentence.

    The message names the file or option and says what to do about it.
    """
