"""Settings of the test project: used by the tests, the demo and manage.py."""

from __future__ import annotations

import os

from test_project import database

BASE_URL = os.environ.get("PUBSUBPULL_BASE_URL", "http://testserver")
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "test-project-not-secret")
DEBUG = os.environ.get("DJANGO_DEBUG", "") == "1"
ALLOWED_HOSTS = ["*"]
USE_TZ = True
TIME_ZONE = "UTC"
ROOT_URLCONF = "test_project.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "procrastinate.contrib.django",
    "pubsubpull",
    "pubsubpull.mirror",
    "test_project.shop",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "pubsubpull.middleware.RequestMiddleware",
]

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

DATABASES = {"default": database.default()}

STATIC_URL = "static/"

# The demo's subscriber verifies the publisher's webhooks with this secret.
DEMO_WEBHOOK_SECRET = os.environ.get("DEMO_WEBHOOK_SECRET", "")

PUBSUBPULL = {
    "TRACK": {"auth.user": {"exclude": ["password"]}},
    "ALLOWED_TARGETS": ["http://127.0.0.1:", "http://localhost:"],
    "EVENTS": ["billing.invoice"],
}
