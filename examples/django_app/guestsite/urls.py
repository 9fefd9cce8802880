from django.urls import path
from guestbook import views

urlpatterns = [
    path("", views.home),
    path("entries", views.entries),
    path("async-count", views.async_count),
]
