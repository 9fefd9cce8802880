"""A one-file Django project (settings in code), served as WSGI and as ASGI.

The SQLite file is ``$NOTES_DB``. ``/`` reads the ``notes_note`` table twice,
with a raw ``connection.cursor()`` and with the ORM; ``/async`` is an async view
using the async ORM. Both are what Django refuses to run (SynchronousOnlyOperation)
in a thread where an event loop is running.
"""

# ruff: noqa: E402  (Django must be configured before its models are imported)

import os

import django
from django.conf import settings

settings.configure(
    DEBUG=False,
    SECRET_KEY="only-for-tests",
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    INSTALLED_APPS=["notes"],
    MIDDLEWARE=[],
    DATABASES={
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ["NOTES_DB"],
            "CONN_MAX_AGE": None,  # one connection per thread, kept across requests
        }
    },
)
django.setup()

from django.core.asgi import get_asgi_application
from django.core.wsgi import get_wsgi_application
from django.db import connection
from django.db.backends.signals import connection_created
from django.http import HttpRequest, HttpResponse
from django.urls import path
from notes.models import Note


def notes(request: HttpRequest) -> HttpResponse:
    with connection.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM notes_note")
        (count,) = cursor.fetchone()
    texts = ",".join(Note.objects.order_by("id").values_list("text", flat=True))
    return HttpResponse(f"raw={count} orm={texts}", content_type="text/plain")


async def async_notes(request: HttpRequest) -> HttpResponse:
    count = await Note.objects.acount()
    first = await Note.objects.order_by("id").afirst()
    return HttpResponse(f"async count={count} first={first and first.text}")


OPENED = []  # one entry per database connection this process opened


def _count_opened(sender: object, **kwargs: object) -> None:
    OPENED.append(1)


connection_created.connect(_count_opened)


def which_connection(request: HttpRequest) -> HttpResponse:
    """The worker's pid and how many database connections it has opened so far."""
    connection.ensure_connection()
    return HttpResponse(f"{os.getpid()} {len(OPENED)}")


urlpatterns = [path("", notes), path("async", async_notes), path("conn", which_connection)]

application = get_wsgi_application()
asgi_application = get_asgi_application()
