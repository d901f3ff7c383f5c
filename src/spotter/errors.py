"""Errors a user can fix. The command line prints their message on one line (exit status 2); any other
exception is a bug in Spotter and shows its traceback."""


class UserError(Exception):
    """A mistake in the input, the settings or the run folder; the message says what to do."""


class BadInput(UserError, ValueError):
    """A setting or an input value that cannot be used."""
