"""The mirror's durable state: where each copy resumes, and the last ``seq`` applied per row."""

from __future__ import annotations

from django.db import models

from pubsubpull.models import validate_position


class Mirror(models.Model):
    """A local copy of another service's model, kept by ``manage.py pubsubpull pull``.

    The state is durable: a pull that is killed resumes where its last committed page
    ended.
    """

    service = models.CharField(max_length=2000, help_text="base URL of the remote pull API")
    label = models.CharField(max_length=255, help_text="remote model, app_label.model_name")
    into = models.CharField(max_length=255, help_text="local model, app_label.model_name")
    cursor = models.CharField(max_length=41, validators=[validate_position])
    backfill_after = models.TextField(blank=True, default="", help_text="last pk copied")
    backfilled = models.BooleanField(default=False)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["service", "label", "into"], name="pubsubpull_mirror_one_per_model"
            )
        ]

    def __str__(self) -> str:
        return f"{self.service} {self.label} -> {self.into}"


class MirrorRow(models.Model):
    """The ``seq`` of the last change a mirror applied to a row: older ones are skipped."""

    mirror = models.ForeignKey(Mirror, on_delete=models.CASCADE, related_name="rows")
    pk_value = models.TextField()
    seq = models.BigIntegerField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["mirror", "pk_value"], name="pubsubpull_mirror_one_seq_per_row"
            )
        ]

    def __str__(self) -> str:
        return f"{self.mirror_id}:{self.pk_value}@{self.seq}"
