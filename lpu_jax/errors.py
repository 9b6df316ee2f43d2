"""The one exception type for mistakes a user can make (bad path, bad flag, bad checkpoint).

Command-line entry points turn it into one line on stderr and exit status 2; library callers can
catch it. Anything else that escapes is a bug in lpu_jax and keeps its traceback.
"""


class UserError(Exception):
    """Bad input the user can fix; the message says what is wrong and what to do."""
