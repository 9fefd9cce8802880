"""One model: enough for an ORM query against the SQLite file the test created."""

from django.db import models


class Note(models.Model):
    text = models.CharField(max_length=100)

    class Meta:
        app_label = "notes"
