"""kamisama-server: a pre-fork supervisor (``kamisama``) and the server built on it."""
