from django.db import models


class Entry(models.Model):
    """One line in the guest book."""

    text = models.CharField(max_length=200)
    created = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.text
