"""Sample models: three tracked, one not."""

from django.db import models

import pubsubpull


@pubsubpull.track(exclude=["password"])
class Customer(models.Model):
    name = models.CharField(max_length=100)
    email = models.EmailField(blank=True, default="")
    password = models.CharField(max_length=128, blank=True, default="")
    active = models.BooleanField(default=True)

    def __str__(self) -> str:
        return self.name


@pubsubpull.track
class Product(models.Model):
    sku = models.CharField(max_length=32, unique=True)
    name = models.CharField(max_length=100)
    price = models.DecimalField(max_digits=10, decimal_places=2)

    def __str__(self) -> str:
        return self.sku


@pubsubpull.track()
class Order(models.Model):
    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="orders")
    total = models.DecimalField(max_digits=10, decimal_places=2, default=0)
    note = models.TextField(blank=True, default="")
    created = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"Order {self.pk}"


class Note(models.Model):
    """Not tracked: writes to it record nothing."""

    text = models.TextField()

    def __str__(self) -> str:
        return self.text[:40]


class Stock(models.Model):
    """Has a composite primary key: cannot be tracked (check pubsubpull.E002)."""

    pk = models.CompositePrimaryKey("warehouse", "product")
    warehouse = models.CharField(max_length=10)
    product = models.ForeignKey(Product, on_delete=models.CASCADE)
    quantity = models.IntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.warehouse}/{self.product_id}"


class RemoteCustomer(models.Model):
    """The subscriber's cache of another service's customers (demo): not tracked.

    ``seq`` is the change ``seq`` last applied to the row: a change applies only if
    its ``seq`` is greater, so versions of one row never go back in time. Deleted rows
    stay as tombstones so a late, older change cannot bring them back.
    """

    id = models.BigIntegerField(primary_key=True)
    name = models.CharField(max_length=100, blank=True, default="")
    email = models.CharField(max_length=254, blank=True, default="")
    active = models.BooleanField(default=True)
    deleted = models.BooleanField(default=False)
    seq = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return self.name
