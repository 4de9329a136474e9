"""The one error an operator action raises."""

from __future__ import annotations


class OperatorError(Exception):
    """An operator action could not be done; the message says why and what to do."""


class InvalidChange(OperatorError):
    """A config change that does not validate: nothing was written; the message names the field."""
