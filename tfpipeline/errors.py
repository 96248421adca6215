"""The one exception type that means "the user can fix this".

Command-line entry points catch `UserError`, print its message as one paragraph and
exit non-zero, instead of showing a traceback. Everything else is a bug and keeps its
traceback.
"""


class UserError(Exception):
    """A mistake the user can fix: bad flag, missing data files, unwritable directory."""
