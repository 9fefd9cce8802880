"""Settings of the smallest useful Django project: one app, one SQLite database.

The database file is ``$EXAMPLE_DB`` (default: ``kamisama-django-example.sqlite3``
in the temporary directory); create its table with ``manage.py migrate``.
"""

import os
import tempfile
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

# An example: set DJANGO_SECRET_KEY and DJANGO_DEBUG for anything real.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-secret")
DEBUG = os.environ.get("DJANGO_DEBUG", "") == "1"
ALLOWED_HOSTS = ["*"]

INSTALLED_APPS = ["guestbook"]
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "guestsite.urls"
WSGI_APPLICATION = "guestsite.wsgi.application"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("EXAMPLE_DB")
        or str(Path(tempfile.gettempdir()) / "kamisama-django-example.sqlite3"),
        # Several workers write to one file: wait for each other's locks.
        "OPTIONS": {"timeout": 10},
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
