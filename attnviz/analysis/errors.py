"""The one error type every front end (app, HTTP API, CLI, video) shows to the user as is."""

from __future__ import annotations


class UserError(ValueError):
    """A problem the user can fix; the message is shown as is (one line, no traceback)."""
