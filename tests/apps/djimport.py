"""The Django project of djsite.py, creating its table when the module is imported.

As apps that "migrate" at startup do: ``connection.cursor()`` at module level,
in each worker (``IF NOT EXISTS`` and one seeded row, however many workers race).
"""

import djsite
from django.db import connection
from notes import SCHEMA

with connection.cursor() as cursor:
    cursor.execute(SCHEMA)
    cursor.execute(
        "INSERT INTO notes_note (text) SELECT 'seeded' WHERE NOT EXISTS (SELECT 1 FROM notes_note)"
    )

application = djsite.application
