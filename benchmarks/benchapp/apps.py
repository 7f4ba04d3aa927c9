from django.apps import AppConfig


class BenchAppConfig(AppConfig):
    name = "benchmarks.benchapp"
    label = "benchapp"
    verbose_name = "pubsubpull benchmarks"
    default_auto_field = "django.db.models.BigAutoField"
