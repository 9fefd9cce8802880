"""ASGI entry point: ``kamisama-serve guestsite.asgi:application --app-dir examples/django_app``.

Sync views (the ORM ones here) run in asgiref's thread, outside the event loop.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "guestsite.settings")
application = get_asgi_application()
