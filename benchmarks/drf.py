"""The peer of the pull benchmark: Django REST framework over the same table.

A plain ``ModelSerializer`` + ``ModelViewSet`` over :class:`benchapp.TrackedRow`, served
twice: with DRF's cursor pagination (ordered by primary key, as pubsubpull's keyset is) and
with its limit-offset pagination, 1,000 rows a page. Included at ``drf/`` by
``benchmarks.urls``: ``drf/cursor/rows/`` and ``drf/offset/rows/``.
"""

from __future__ import annotations

from django.urls import URLPattern, include, path
from rest_framework import pagination, permissions, serializers, viewsets
from rest_framework.authentication import BasicAuthentication, SessionAuthentication
from rest_framework.routers import SimpleRouter

from benchmarks.benchapp.models import TrackedRow

PAGE_SIZE = 1000


class TrackedRowSerializer(serializers.ModelSerializer):
    class Meta:
        model = TrackedRow
        fields = ["id", "name", "email", "amount", "active", "created", "payload"]


class CursorPagination(pagination.CursorPagination):
    ordering = "pk"
    page_size = PAGE_SIZE


class LimitOffsetPagination(pagination.LimitOffsetPagination):
    default_limit = PAGE_SIZE
    max_limit = PAGE_SIZE


class _RowViewSet(viewsets.ModelViewSet):
    queryset = TrackedRow._default_manager.order_by("pk")
    serializer_class = TrackedRowSerializer
    # Sessions for the benchmark (Basic would add a password hash to every request).
    authentication_classes = [SessionAuthentication, BasicAuthentication]
    permission_classes = [permissions.IsAuthenticated]


class CursorRowViewSet(_RowViewSet):
    pagination_class = CursorPagination


class OffsetRowViewSet(_RowViewSet):
    pagination_class = LimitOffsetPagination


def _routes(viewset: type[_RowViewSet]) -> list[URLPattern]:
    router = SimpleRouter()
    router.register("rows", viewset, basename="rows")
    return list(router.urls)


urlpatterns = [
    path("cursor/", include((_routes(CursorRowViewSet), "cursor"))),
    path("offset/", include((_routes(OffsetRowViewSet), "offset"))),
]
