"""The hello route in Flask: what a real WSGI framework adds on top of the server.

Same routes as hello_wsgi ("/", "/pid", "/slow" answering the pid after 50 ms).
"""

from __future__ import annotations

import os
import time

from flask import Flask, Response

app = Flask(__name__)


@app.route("/")
def hello() -> Response:
    return Response("Hello, world!", mimetype="text/plain")


@app.route("/pid")
def pid() -> Response:
    return Response(str(os.getpid()), mimetype="text/plain")


@app.route("/slow")
def slow() -> Response:
    time.sleep(0.05)
    return Response(str(os.getpid()), mimetype="text/plain")
