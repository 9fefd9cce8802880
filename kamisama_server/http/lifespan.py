"""ASGI lifespan: uvicorn's ``LifespanOn``, run once per worker.

Startup runs before the worker accepts; shutdown after the drain. A failed
startup raises ``LifespanFailed`` so the worker never serves.
"""

from __future__ import annotations

from typing import Any, Literal

from uvicorn.lifespan.on import LifespanOn

from .config import HttpConfig
from .uvicorn_glue import uvicorn_config

LifespanMode = Literal["auto", "on", "off"]


class LifespanFailed(RuntimeError):
    """The app's lifespan startup (or, with mode "on", its protocol) failed."""


class Lifespan:
    """``mode``: "auto" (use it if the app speaks it), "on" (must), "off"."""

    def __init__(
        self, app: Any, config: HttpConfig | None = None, mode: LifespanMode = "auto"
    ) -> None:
        if mode not in ("auto", "on", "off"):
            raise ValueError(f"lifespan mode must be auto, on or off, not {mode!r}")
        self._impl: LifespanOn | None = None
        self.state: dict[str, Any] = {}
        if mode != "off":
            self._impl = LifespanOn(uvicorn_config(app, config or HttpConfig(), lifespan=mode))
            self.state = self._impl.state
        self._started = False

    @property
    def enabled(self) -> bool:
        return self._impl is not None

    async def startup(self) -> None:
        if self._impl is None:
            return
        await self._impl.startup()
        if self._impl.should_exit:
            raise LifespanFailed("ASGI lifespan startup failed")
        self._started = True

    async def shutdown(self) -> None:
        if self._impl is None or not self._started:
            return
        self._started = False
        await self._impl.shutdown()
        if self._impl.should_exit:
            raise LifespanFailed("ASGI lifespan shutdown failed")
