from django.contrib import admin
from django.urls import include, path

from test_project.shop import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("shop/", include(views.urlpatterns)),
    path("pubsubpull/", include("pubsubpull.urls")),
]
