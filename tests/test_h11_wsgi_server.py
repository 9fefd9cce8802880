"""tests/test_wsgi_server.py again, the engine parsing with h11 (see h11_rerun)."""

from h11_rerun import h11_known_difference, h11_parser  # noqa: F401 - autouse fixtures
from test_wsgi_server import *  # noqa: F403 - the suite, collected here again
