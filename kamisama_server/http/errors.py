"""The errors an exchange raises to the adapters (and they to the app).

A module of their own, not compiled: mypyc cannot compile a class that
subclasses ``OSError``, and the exchange contract (``exchange.py``) is
compiled so that the engine and the adapters call each other natively.
"""

from __future__ import annotations


class RequestBodyError(OSError):
    """The request body turned out invalid while the app read it.

    An ``OSError`` so that WSGI apps, which expect I/O errors from
    ``wsgi.input.read()``, handle it as they handle a dropped client.
    ``status`` is what the client gets if no response head was sent yet.
    """

    status = 400


class RequestBodyTooLarge(RequestBodyError):
    """The body exceeded ``limit_request_body``."""

    status = 413


class ClientDisconnected(OSError):
    """The client went away; writes and reads on the exchange fail with this."""


class Abandoned(ClientDisconnected):
    """The watchdog gave up on a WSGI call: whatever its app does now goes nowhere."""
