"""FastAPI on Starlette: lifespan state, a streamed response and a WebSocket echo."""

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import StreamingResponse


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.started_by = os.getpid()
    yield


app = FastAPI(lifespan=lifespan)


@app.get("/state")
def read_state(request: Request) -> dict[str, int]:
    return {"started_by": request.app.state.started_by, "pid": os.getpid()}


@app.get("/stream")
async def stream(n: int) -> StreamingResponse:
    async def parts() -> AsyncIterator[str]:
        for i in range(n):
            yield f"part {i};"
            await asyncio.sleep(0.001)

    return StreamingResponse(parts(), media_type="text/plain")


@app.websocket("/echo")
async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        while True:
            await websocket.send_text("echo " + await websocket.receive_text())
    except WebSocketDisconnect:
        pass
