"""Include with ``path("pubsubpull/", include("pubsubpull.urls"))``."""

from django.urls import path

from . import views

app_name = "pubsubpull"

urlpatterns = [
    path("", views.directory, name="directory"),
    path("models/<str:label>/", views.instances, name="instances"),
    path("models/<str:label>/<str:pk>/", views.instance, name="instance"),
    path("changes/", views.changes, name="changes"),
    path("subscriptions/", views.subscription_list, name="subscriptions"),
    path("subscriptions/<str:name>/", views.subscription, name="subscription"),
    path("subscriptions/<str:name>/ping/", views.ping, name="ping"),
    path("openapi.json", views.openapi, name="openapi"),
    path("metrics", views.metrics_view, name="metrics"),
]
