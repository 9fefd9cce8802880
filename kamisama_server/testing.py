"""pytest plugin (entry point ``pytest11``): a live multi-worker server fixture.

Filled in with the server; until then it registers nothing.
"""
