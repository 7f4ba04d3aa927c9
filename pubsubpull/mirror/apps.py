from django.apps import AppConfig


class MirrorConfig(AppConfig):
    name = "pubsubpull.mirror"
    label = "pubsubpull_mirror"
    verbose_name = "pubsubpull mirrors"
    default_auto_field = "django.db.models.BigAutoField"
