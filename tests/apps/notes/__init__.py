"""A Django app with one model (notes.models), for djsite.py; this file imports no Django."""

# The model's table, as the tests and djimport.py create it (no migrations here).
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS notes_note "
    "(id integer NOT NULL PRIMARY KEY AUTOINCREMENT, text varchar(100) NOT NULL)"
)
