"""The subscriber side's mirror: ``manage.py pubsubpull pull`` keeps a local model a copy
of another service's model, through its pull API.

A separate app, so a service that only publishes gets none of its tables: add
``"pubsubpull.mirror"`` to ``INSTALLED_APPS`` (after ``"pubsubpull"``) where you mirror.
"""
