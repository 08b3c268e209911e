"""The one exception type for mistakes a user can fix: entry points print it as one line and exit 2."""


class UserError(Exception):
    """Bad input (config, data, checkpoint, resources); its message says what is wrong and how to fix it."""


class Diverged(UserError):
    """The loss became NaN or infinite: the same run would diverge again, so it is not retried."""


class StorageError(UserError):
    """The storage refused a write: every later write would fail too, so the search stops at once."""
