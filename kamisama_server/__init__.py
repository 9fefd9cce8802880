"""kamisama-server: a pre-fork supervisor (``kamisama``) and the server built on it.

Public names only; see the README for the API.
"""

from kamisama_server.options import KamisamaOptions
from kamisama_server.supervisor import kamisama
from kamisama_server.worker import ready, worker_id

__all__ = ["KamisamaOptions", "kamisama", "ready", "worker_id"]
