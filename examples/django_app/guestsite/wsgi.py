"""WSGI entry point: ``kamisama-serve guestsite.wsgi:application --app-dir examples/django_app``."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "guestsite.settings")
application = get_wsgi_application()
