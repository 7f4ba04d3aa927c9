"""Views used by the tests: writes of tracked and untracked models, sync and async."""

import json

from django.http import HttpRequest, JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

from test_project.shop.mirror import CustomerWebhook
from test_project.shop.models import Customer, Note


@csrf_exempt
def create_customer(request: HttpRequest) -> JsonResponse:
    data = json.loads(request.body or b"{}")
    customer = Customer.objects.create(name=data.get("name", "anon"), password="s3cret")
    return JsonResponse({"id": customer.pk}, status=201)


@csrf_exempt
async def acreate_customer(request: HttpRequest) -> JsonResponse:
    data = json.loads(request.body or b"{}")
    customer = await Customer.objects.acreate(name=data.get("name", "anon"))
    return JsonResponse({"id": customer.pk}, status=201)


def count_customers(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"count": Customer.objects.count()})


@csrf_exempt
def create_note(request: HttpRequest) -> JsonResponse:
    note = Note.objects.create(text="untracked")
    return JsonResponse({"id": note.pk}, status=201)


@csrf_exempt
def fail_after_write(request: HttpRequest) -> JsonResponse:
    from django.db import transaction

    with transaction.atomic():
        Customer.objects.create(name="rolled back")
        return JsonResponse({"error": "nope"}, status=400) if _rollback() else JsonResponse({})


def _rollback() -> bool:
    from django.db import transaction

    transaction.set_rollback(True)
    return True


urlpatterns = [
    path("customers/", create_customer),
    path("acustomers/", acreate_customer),
    path("count/", count_customers),
    path("notes/", create_note),
    path("rollback/", fail_after_write),
    path("webhook/", CustomerWebhook.as_view()),
]
