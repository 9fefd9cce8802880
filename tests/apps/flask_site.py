"""Flask features that need the request's thread and context to stay put.

``/async``: an ``async def`` view (Flask runs it with asgiref's AsyncToSync,
which refuses a thread with a running event loop). ``/stream``: a streamed
body whose generator reads ``request.args`` through ``stream_with_context``.
"""

import asyncio
from collections.abc import Iterator

from flask import Flask, Response, request, stream_with_context

app = Flask(__name__)


@app.get("/async")
async def async_view() -> str:
    await asyncio.sleep(0.001)
    return f"async view, n={request.args['n']}"


@app.get("/stream")
def stream() -> Response:
    def chunks() -> Iterator[str]:
        for i in range(int(request.args["n"])):
            yield f"chunk {i} of {request.args['n']};"

    return Response(stream_with_context(chunks()), mimetype="text/plain")
