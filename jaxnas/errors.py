"""The error every input problem raises: its message names the file or flag and what is
wrong, so the command line prints one line instead of a traceback.

A module of its own, numpy-free, so that the prediction core (prediction.py) that an
exported model carries with it (modes/export.py) can raise it without jaxnas.
"""


class DataError(ValueError):
    """Bad input data; the message names the file and the problem."""
