"""A small Flask (WSGI) app. From the repository root:
``kamisama-serve examples.flask_app.app:app --workers 2``.
"""

from __future__ import annotations

import os

from flask import Flask, Response, jsonify, request

from kamisama_server import worker_id

app = Flask(__name__)


@app.get("/")
def home() -> str:
    return "Hello from Flask on kamisama-serve\n"


@app.get("/json")
def info() -> Response:
    """Which worker process answered: repeat it to see the load spread."""
    return jsonify(framework="flask", worker=worker_id(), pid=os.getpid())


@app.get("/hello/<name>")
def hello(name: str) -> Response:
    return jsonify(greeting=f"Hello, {name}!")


@app.post("/echo")
def echo() -> Response:
    """The request body back, with its content type."""
    return Response(
        request.get_data(),
        content_type=request.content_type or "application/octet-stream",
    )
