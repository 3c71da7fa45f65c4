"""The one exception type users see: a one-line message that says what to do; the CLI exits 2."""


class UserError(Exception):
    """Bad input or an impossible setting. The message names the input, the problem and the fix."""
