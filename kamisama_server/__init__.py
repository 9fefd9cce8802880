"""kamisama-server: a pre-fork supervisor (``kamisama``) and the server built on it.

Public names only; see the README for the API. They are imported on first use,
so that loading the pytest plugin (``kamisama_server.testing``) stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kamisama_server.options import KamisamaOptions
    from kamisama_server.supervisor import kamisama
    from kamisama_server.worker import draining, ready, request_replacement, worker_id

__all__ = [
    "KamisamaOptions",
    "draining",
    "kamisama",
    "ready",
    "request_replacement",
    "worker_id",
]

_HOMES = {
    "KamisamaOptions": "kamisama_server.options",
    "kamisama": "kamisama_server.supervisor",
    "draining": "kamisama_server.worker",
    "ready": "kamisama_server.worker",
    "request_replacement": "kamisama_server.worker",
    "worker_id": "kamisama_server.worker",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'kamisama_server' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
