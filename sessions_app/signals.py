"""Hooks other parts of the product attach to (e.g. notify when a session ends)."""

from django.dispatch import Signal

# Sent once, by the caller that moved the session to its final status; kwargs: session.
session_finished = Signal()
