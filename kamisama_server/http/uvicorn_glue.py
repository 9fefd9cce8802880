"""The one place we build a ``uvicorn.Config``: uvicorn's lifespan and WebSocket code need one.

We hand it the already-loaded app and mark it loaded, so uvicorn neither
imports anything nor touches logging; only the fields those two pieces read
matter.
"""

from __future__ import annotations

from typing import Any, Literal

import uvicorn

from .config import HttpConfig


def uvicorn_config(
    app: Any, config: HttpConfig, lifespan: Literal["auto", "on", "off"] = "auto"
) -> uvicorn.Config:
    """A loaded ``uvicorn.Config`` for ``app`` reflecting our ``HttpConfig``."""
    result = uvicorn.Config(
        app,
        lifespan=lifespan,
        interface="asgi3",
        log_config=None,
        root_path=config.root_path,
        proxy_headers=False,
        server_header=False,
        date_header=False,
        ws_max_size=config.ws_max_size,
    )
    result.loaded_app = app
    result.loaded = True
    return result
