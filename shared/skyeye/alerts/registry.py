"""Making a rule: its webhook URLs checked, a signing secret per endpoint, the rule stored.

One path for ``POST /rules`` and ``skyeye rules create``.
"""

from __future__ import annotations

from skyeye.adapters.postgres import Connection
from skyeye.adapters.webhook import new_secret
from skyeye.alerts.rules import RuleSpec
from skyeye.alerts.webhooks import check_webhook_url
from skyeye.catalog import alerts as alert_store
from skyeye.settings import Settings

__all__ = ["InvalidRule", "register"]


class InvalidRule(ValueError):
    """A rule that cannot be made, with the field at fault (``webhooks[1]``)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def register(
    conn: Connection, spec: RuleSpec, settings: Settings, api_base_url: str | None
) -> alert_store.StoredRule:
    """Store the rule with one endpoint, and a new secret, per webhook URL.

    Raises :class:`InvalidRule` for a webhook URL that may not be used (not http(s), on a
    private network unless ``settings.alerts.allow_private_webhooks``, the API itself, too
    many) and :class:`skyeye.catalog.alerts.RuleExists` for a name in use. The secrets are in
    the returned rule's endpoints, and nowhere else they can be read back.
    """
    most = settings.alerts.max_webhooks_per_rule
    if len(spec.webhooks) > most:
        raise InvalidRule("webhooks", f"at most {most} webhooks a rule, got {len(spec.webhooks)}")
    urls = []
    for n, url in enumerate(spec.webhooks):
        try:
            urls.append(
                check_webhook_url(
                    url,
                    allow_private=settings.alerts.allow_private_webhooks,
                    api_base_url=api_base_url,
                )
            )
        except ValueError as exc:
            raise InvalidRule(f"webhooks[{n}]", str(exc)) from None
    if len(set(urls)) != len(urls):
        raise InvalidRule("webhooks", "a URL is listed twice")
    checked = spec.model_copy(update={"webhooks": urls})
    return alert_store.create_rule(conn, checked, [new_secret() for _ in urls])
