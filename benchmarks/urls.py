"""URLs of the benchmarks: the test project's, plus ``drf/`` when ``benchmarks.drf`` exists."""

from __future__ import annotations

from importlib.util import find_spec

from django.urls import include, path

from test_project.urls import urlpatterns as project_urlpatterns

urlpatterns = list(project_urlpatterns)
if find_spec("benchmarks.drf") is not None:  # written separately; absent in older checkouts
    urlpatterns.append(path("drf/", include("benchmarks.drf")))
