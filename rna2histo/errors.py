"""The one exception type for bad user input: the command line prints it as one line."""


class UserError(Exception):
    """Bad input from the user (a file, a folder, a parameter): shown without a traceback.

    The message names what is wrong and where, e.g. ``rna.csv: row 'P7', column 'CD3E': ...``.
    """


def where(path, message: str) -> UserError:
    """A `UserError` whose message starts with the offending path."""
    return UserError(f"{path}: {message}")

