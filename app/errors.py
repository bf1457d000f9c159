"""Errors that reach the user, each with the exit code it maps to."""

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


class DsmError(Exception):
    """A failure explained to the user; `exit_code` says how the process should end."""

    exit_code = EXIT_FAILED


class BadInput(DsmError):
    """Bad input from the user or from a file the user gave us (exit 2)."""

    exit_code = EXIT_BAD_INPUT
