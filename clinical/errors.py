"""The project's one base of user-facing errors.

Every error that reports bad input (a patient, case, file, column or option named with the
problem) derives from :class:`MultitaskError` as well as from the built-in type it always had
(``ValueError`` or ``RuntimeError``), so every command line catches this one type, prints
``error: ...`` and exits with status 2, while library callers catching the built-in types keep
working. It lives in ``clinical/``, the lowest layer, which every other package imports and which
imports none of them, so no import arrow runs upwards.
"""
from __future__ import annotations


class MultitaskError(Exception):
    """Bad input to one of the project's commands or library entry points; the message names the
    case, file, column or option and the problem."""
