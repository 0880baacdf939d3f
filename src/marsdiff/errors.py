"""User-facing errors.

Every problem a user can fix (bad input file, wrong config, missing package) is raised as a
:class:`MarsdiffError` whose message is one line naming the culprit. Entry points turn it into
that line on stderr and a non-zero exit, never a traceback.
"""


class MarsdiffError(Exception):
    """A problem with the user's input, configuration or environment, explained in one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class MissingPackageError(MarsdiffError):
    """An optional or offline package is not installed; the message says how to install it."""

    def __init__(self, package: str, what: str, pip_args: str | None = None):
        fix = f"pip install {pip_args or package}"
        super().__init__(f"{what} needs the package '{package}', which is not installed: run `{fix}`")
        self.package = package
