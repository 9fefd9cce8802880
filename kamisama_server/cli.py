"""``kamisama-serve APP [options]``: parse, serve, exit with the server's code."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from kamisama_server.config import parse_args
from kamisama_server.serve import serve


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point; usage errors exit 2 (argparse), the rest via ``serve``."""
    config = parse_args(argv)
    sys.exit(serve(config))
