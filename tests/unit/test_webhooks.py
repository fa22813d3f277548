"""Webhook policy and signing: which URLs are refused, the signature a receiver verifies with the
standardwebhooks package itself, the backoff's bounds, what follows an attempt.

Host names other than ``localhost`` resolve through a stub resolver (no DNS); literal addresses
resolve as the system resolves them, which needs no network.
"""

import base64
import socket
from datetime import UTC, datetime, timedelta

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from skyeye.adapters import webhook
from skyeye.alerts.webhooks import (
    DeliveryStatus,
    UnresolvedHost,
    backoff_s,
    check_webhook_url,
    decide,
    disable_reason,
)
from skyeye.settings import AlertSettings

API = "http://127.0.0.1:8321"


def _resolver(table: dict[str, list[str]]):
    def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return table[host]

    return resolve


def _check(url: str, allow_private: bool = False, **kwargs) -> str:
    return check_webhook_url(url, allow_private=allow_private, api_base_url=API, **kwargs)


@pytest.mark.parametrize(
    ("url", "normalised"),
    [
        ("https://93.184.216.34/hooks/skyeye?x=1", "https://93.184.216.34/hooks/skyeye?x=1"),
        ("HTTP://93.184.216.34:8080", "http://93.184.216.34:8080/"),
        ("https://93.184.216.34/a#fragment", "https://93.184.216.34/a"),
        ("https://[2606:2800:220:1::1]/a", "https://[2606:2800:220:1::1]/a"),
    ],
)
def test_a_public_http_url_is_accepted_and_normalised(url: str, normalised: str) -> None:
    assert _check(url) == normalised


def test_a_host_name_is_judged_by_every_address_it_resolves_to() -> None:
    resolve = _resolver({"hooks.example.com": ["93.184.216.34"], "sneaky.example.com":
                         ["93.184.216.34", "10.1.2.3"]})  # fmt: skip
    assert _check("https://Hooks.Example.com/x", resolver=resolve) == "https://hooks.example.com/x"
    with pytest.raises(ValueError, match=r"10\.1\.2\.3, a private address"):
        _check("https://sneaky.example.com/x", resolver=resolve)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://93.184.216.34/x", "not an http or https URL"),
        ("file:///etc/passwd", "not an http or https URL"),
        ("93.184.216.34/x", "not an http or https URL"),
        ("http:///path", "has no host"),
        ("https://user:secret@93.184.216.34/x", "must not hold credentials"),
        ("https://token@93.184.216.34/x", "must not hold credentials"),
        ("https://93.184.216.34:99999/x", "invalid port"),
        ("https://93.184.216.34/a b", "spaces or control characters"),
        ("https://93.184.216.34/\x00", "spaces or control characters"),
        ("https://nowhere.invalid/x", "does not resolve"),
        ("https://" + "a" * 2100 + ".com/", "at most 2048 characters"),
    ],
)
def test_a_url_that_is_no_webhook_target_is_refused_with_its_reason(url: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        _check(url, allow_private=True, resolver=_resolver({}))


def test_only_a_host_that_does_not_resolve_is_a_refusal_that_may_pass_later() -> None:
    with pytest.raises(UnresolvedHost, match="does not resolve"):
        _check("https://nowhere.invalid/x", resolver=_resolver({}))
    with pytest.raises(ValueError) as refused:
        _check("http://10.0.0.8/hook")
    assert not isinstance(refused.value, UnresolvedHost)


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("http://127.0.0.1:9000/hook", "loopback"),
        ("http://localhost:9000/hook", "loopback"),
        ("http://[::1]:9000/hook", "loopback"),
        ("http://[::ffff:127.0.0.1]/hook", "loopback"),
        ("http://10.0.0.8/hook", "private"),
        ("http://192.168.1.20/hook", "private"),
        ("http://172.16.5.4/hook", "private"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("http://[fe80::1]/hook", "link-local"),
        ("http://224.0.0.1/hook", "multicast"),
        ("http://0.0.0.0/hook", "unspecified"),
        ("http://240.0.0.1/hook", "reserved"),
    ],
)
def test_the_pipelines_own_network_is_refused_unless_allowed(url: str, kind: str) -> None:
    with pytest.raises(ValueError, match=f"a {kind} address") as refused:
        _check(url)
    assert "SKYEYE_ALERTS__ALLOW_PRIVATE_WEBHOOKS" in str(refused.value)
    assert _check(url, allow_private=True).startswith("http://")


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8321/rules", "http://LOCALHOST:8321/", "https://127.0.0.1:8321/x"],
)
def test_the_api_itself_is_refused_even_where_private_targets_are_allowed(url: str) -> None:
    with pytest.raises(ValueError, match="points at the SkyEye API itself"):
        _check(url, allow_private=True)
    # another port of the same host is another service
    assert _check(url.replace("8321", "8322"), allow_private=True)


def test_a_new_secret_is_whsec_and_32_random_bytes() -> None:
    secret = webhook.new_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    assert webhook.new_secret() != secret


def test_a_signed_body_verifies_with_standardwebhooks_and_a_changed_one_does_not() -> None:
    secret = webhook.new_secret()
    payload = {"type": "alert.fired", "data": {"alert_id": "a1", "rule_name": "Hafen ä"}}
    body = webhook.encode(payload)
    headers = webhook.signed_headers(secret, "a1", body)
    assert headers["webhook-id"] == "a1"
    assert headers["content-type"] == "application/json"
    assert Webhook(secret).verify(body, headers) == payload
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace(b"a1", b"a2"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(webhook.new_secret()).verify(body, headers)


def test_the_signature_covers_the_timestamp() -> None:
    secret = webhook.new_secret()
    body = b'{"x":1}'
    at = datetime.now(UTC).replace(microsecond=0)
    headers = webhook.signed_headers(secret, "m", body, at)
    assert headers["webhook-timestamp"] == str(int(at.timestamp()))
    moved = {**headers, "webhook-timestamp": str(int(at.timestamp()) + 1)}
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, moved)


def test_an_attempt_on_a_closed_port_is_an_error_in_words_not_an_exception() -> None:
    """No server: port 1 on the loopback refuses the connection."""
    sender = webhook.Sender(timeout_s=2)
    try:
        attempt = sender.post("http://127.0.0.1:1/hook", webhook.new_secret(), "m", b"{}")
    finally:
        sender.close()
    assert attempt.status_code is None and not attempt.delivered
    assert attempt.error is not None and attempt.error.startswith("could not connect")
    assert attempt.describe() == attempt.error


@pytest.mark.parametrize(("code", "delivered"), [(200, True), (204, True), (301, False),
                                                 (404, False), (500, False)])  # fmt: skip
def test_only_a_2xx_answer_delivers(code: int, delivered: bool) -> None:
    attempt = webhook.Attempt(code, None, 1.0)
    assert attempt.delivered is delivered
    assert attempt.describe() == f"HTTP {code}"


def test_the_backoff_grows_exponentially_within_its_bounds_with_full_jitter() -> None:
    assert backoff_s(1, 1.0, 600.0, rand=lambda: 0.0) == 1.0
    assert [backoff_s(n, 1.0, 600.0, rand=lambda: 1.0) for n in (1, 2, 3, 9, 10, 50)] == [
        2.0, 4.0, 8.0, 512.0, 600.0, 600.0
    ]  # fmt: skip
    assert backoff_s(3, 1.0, 600.0, rand=lambda: 0.5) == 4.5
    # a huge attempt number neither overflows nor leaves the bounds
    assert backoff_s(10_000, 1.0, 600.0, rand=lambda: 1.0) == 600.0
    # an initial wait above the maximum is held to the maximum
    assert backoff_s(1, 5.0, 2.0, rand=lambda: 0.3) == 2.0


def test_the_backoff_really_jitters() -> None:
    waits = {backoff_s(4, 1.0, 600.0) for _ in range(50)}
    assert len(waits) > 40
    assert all(1.0 <= w <= 16.0 for w in waits)


SETTINGS = AlertSettings(retry_for_s=3600, initial_backoff_s=1, max_backoff_s=60, disable_after=3)
CREATED = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def test_a_2xx_delivers() -> None:
    decision = decide(
        delivered=True, attempts=4, created_at=CREATED, now=CREATED, settings=SETTINGS
    )
    assert decision.status is DeliveryStatus.DELIVERED and decision.next_attempt_at is None


def test_a_failure_within_the_retry_time_is_retried_after_the_backoff() -> None:
    now = CREATED + timedelta(seconds=10)
    decision = decide(
        delivered=False, attempts=3, created_at=CREATED, now=now, settings=SETTINGS,
        rand=lambda: 1.0,
    )  # fmt: skip
    assert decision.status is DeliveryStatus.PENDING
    assert decision.next_attempt_at == now + timedelta(seconds=8)


def test_the_last_retry_falls_when_the_retry_time_ends_and_a_failure_then_fails_it() -> None:
    deadline = CREATED + timedelta(seconds=3600)
    near = deadline - timedelta(seconds=5)
    decision = decide(
        delivered=False, attempts=20, created_at=CREATED, now=near, settings=SETTINGS,
        rand=lambda: 1.0,
    )  # fmt: skip
    assert decision == decision.__class__(DeliveryStatus.PENDING, deadline)
    for now in (deadline, deadline + timedelta(seconds=30)):
        decision = decide(
            delivered=False, attempts=21, created_at=CREATED, now=now, settings=SETTINGS
        )
        assert decision.status is DeliveryStatus.FAILED and decision.next_attempt_at is None


def test_a_target_the_policy_refuses_fails_at_once_without_retries() -> None:
    decision = decide(
        delivered=False, attempts=1, created_at=CREATED, now=CREATED, settings=SETTINGS,
        refused=True,
    )  # fmt: skip
    assert decision.status is DeliveryStatus.FAILED and decision.next_attempt_at is None


def test_an_endpoint_is_disabled_after_disable_after_failed_deliveries_in_a_row() -> None:
    assert disable_reason(2, SETTINGS, "HTTP 500") is None
    why = disable_reason(3, SETTINGS, "HTTP 500")
    assert why is not None
    assert "3 deliveries in a row failed" in why and "HTTP 500" in why
