"""Error types shared by the library and the CLI."""


class UserError(Exception):
    """A problem with the user's input (flag, file, data).

    The CLI prints its message as one line and exits with code 2. The message must name the
    offending thing (file, flag, key) and, where it helps, what is allowed.
    """
