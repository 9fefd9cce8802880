"""A minimal Django project in one module: settings in code, one model, an ORM view.

"/" fetches a random `Item` by primary key (`Item.objects.get`) from the SQLite table of
bench_db.py and answers it as JSON; "/pid" and "/slow" as in hello_wsgi. No migrations:
the table is made by bench_db.ensure() (the harness calls it before any server starts).
Connections are Django's own: one per thread, kept open (CONN_MAX_AGE=None).

Django refuses ORM calls from a thread whose event loop is running
(SynchronousOnlyOperation): a server that runs WSGI apps on its event loop fails here.
"""

from __future__ import annotations

import os
import time

import bench_db
import django
from django.conf import settings
from django.core.handlers.wsgi import WSGIRequest
from django.http import HttpResponse, JsonResponse
from django.urls import path

settings.configure(
    DEBUG=False,  # DEBUG keeps every query in memory
    SECRET_KEY="benchmark-only",
    ALLOWED_HOSTS=["127.0.0.1", "localhost"],
    ROOT_URLCONF=__name__,
    INSTALLED_APPS=[],
    # As in Django's project template; it also sets Content-Length, without which bjoern
    # answers keep-alive requests ~40 ms late (Nagle meets delayed ACKs on loopback).
    MIDDLEWARE=["django.middleware.common.CommonMiddleware"],
    USE_I18N=False,
    USE_TZ=True,
    DEFAULT_AUTO_FIELD="django.db.models.AutoField",
    DATABASES={
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(bench_db.ensure()),
            "CONN_MAX_AGE": None,
        }
    },
)
django.setup()

from django.core.wsgi import get_wsgi_application  # noqa: E402  (needs settings first)
from django.db import models  # noqa: E402


class Item(models.Model):
    name = models.TextField()
    value = models.IntegerField()

    class Meta:
        app_label = "bench"
        db_table = "items"


def item(_request: WSGIRequest) -> JsonResponse:
    row = Item.objects.get(pk=bench_db.random_key())
    return JsonResponse({"id": row.pk, "name": row.name, "value": row.value})


def pid(_request: WSGIRequest) -> HttpResponse:
    return HttpResponse(str(os.getpid()), content_type="text/plain")


def slow(_request: WSGIRequest) -> HttpResponse:
    time.sleep(0.05)
    return HttpResponse(str(os.getpid()), content_type="text/plain")


urlpatterns = [path("", item), path("pid", pid), path("slow", slow)]
app = get_wsgi_application()
