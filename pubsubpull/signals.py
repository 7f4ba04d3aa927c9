"""Django signals for in-process hooks (email, chat) on subscription state.

Each is sent after the transaction that changed the state commits, with
``sender=Subscription``, ``subscription`` (the instance, as loaded before the change) and
``event`` (the payload of the ``pubsubpull.subscription.<name>`` event appended to the log
in that transaction: ``name``, ``owner``, ``owner_id``, ``status``, ``last_error``,
``failures``, ``down_since``). A receiver that raises is logged and does not affect
delivery or the other receivers::

    from django.dispatch import receiver
    from pubsubpull.signals import subscription_failing

    @receiver(subscription_failing)
    def page_someone(sender, subscription, event, **kwargs):
        ...
"""

from __future__ import annotations

from django.dispatch import Signal

#: The retry schedule was used up: no more attempts until it is resumed.
subscription_failing = Signal()
#: The target answered ``410 Gone``: disabled at once.
subscription_disabled = Signal()
#: A batch was delivered again after the subscription was failing or disabled.
subscription_recovered = Signal()

#: The signal of each event name (the last word of its topic).
BY_EVENT = {
    "failing": subscription_failing,
    "disabled": subscription_disabled,
    "recovered": subscription_recovered,
}
