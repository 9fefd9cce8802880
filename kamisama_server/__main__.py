"""``python -m kamisama_server APP [options]``, the same as ``kamisama-serve``."""

from kamisama_server.cli import main

main()
