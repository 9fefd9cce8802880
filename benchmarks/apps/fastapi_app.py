"""The hello route in FastAPI: what a real ASGI framework adds on top of the server.

Same routes as hello_asgi ("/", "/pid", "/slow" answering the pid after 50 ms);
plain-text bodies so every app sends the same bytes.
"""

from __future__ import annotations

import asyncio
import os

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

app = FastAPI()


@app.get("/", response_class=PlainTextResponse)
async def hello() -> str:
    return "Hello, world!"


@app.get("/pid", response_class=PlainTextResponse)
async def pid() -> str:
    return str(os.getpid())


@app.get("/slow", response_class=PlainTextResponse)
async def slow() -> str:
    await asyncio.sleep(0.05)
    return str(os.getpid())
