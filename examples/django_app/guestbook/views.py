"""ORM views: plain sync code, run by the server on a thread with no event loop
(WSGI), or by Django in its sync thread (ASGI)."""

import json
import os

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from guestbook.models import Entry


def home(request: HttpRequest) -> HttpResponse:
    return HttpResponse(f"Hello from Django on kamisama-serve (pid {os.getpid()})\n")


@csrf_exempt  # an example API without sessions; keep CSRF on for forms
@require_http_methods(["GET", "POST"])
def entries(request: HttpRequest) -> JsonResponse:
    """GET: every entry, oldest first. POST ``{"text": ...}``: add one (201)."""
    if request.method == "POST":
        try:
            text = json.loads(request.body)["text"]
        except (ValueError, KeyError, TypeError):
            return JsonResponse({"error": 'expected {"text": "..."}'}, status=400)
        if not isinstance(text, str) or not 0 < len(text) <= 200:
            return JsonResponse({"error": "text: 1 to 200 characters"}, status=400)
        entry = Entry.objects.create(text=text)
        return JsonResponse({"id": entry.id, "text": entry.text}, status=201)
    rows = Entry.objects.order_by("id").values("id", "text")
    return JsonResponse({"entries": list(rows)})


async def async_count(request: HttpRequest) -> JsonResponse:
    """The async ORM, for the ASGI entry point (it works under WSGI too)."""
    return JsonResponse({"count": await Entry.objects.acount()})
