"""``skyeye rules ...`` and ``skyeye alerts ...``: alert rules and what they fired.

Shapes users and scripts rely on (issue 23)::

    skyeye rules create NAME (--text QUERY | --detect PHRASE [--min-count N]
                              | --ask QUESTION --fires-on ANSWER)
                             [--bbox W,S,E,N] [--webhook URL]... [--json]
    skyeye rules list | show NAME | delete NAME | test NAME
    skyeye alerts list [--rule NAME] [--json]
    skyeye alerts watch
    skyeye alerts deliveries [--rule NAME] [--alert ID] [--json]   (the webhook delivery log)

``rules create --json`` prints the rule with each webhook's signing secret, shown only there.
Rules and alerts are read and written through the catalog, as the API does; ``alerts watch``
follows the API's live feed (``/api/events``), resuming after a dropped connection.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from pydantic import ValidationError

from skyeye.adapters import feed, postgres
from skyeye.adapters.postgres import Connection
from skyeye.alerts import RuleSpec, rule_name_problem
from skyeye.alerts.registry import InvalidRule, register
from skyeye.catalog import alerts as alert_store
from skyeye.catalog import delivery, jsonable, search
from skyeye.cli.arguments import bounded
from skyeye.cli.output import table
from skyeye.contracts import first_error
from skyeye.settings import Settings
from skyeye.stack import resolve
from skyeye.stack.state import read_state

__all__ = ["add_parsers"]

# how long `alerts watch` waits before reconnecting to a feed that dropped
_RECONNECT_S = 1.0


def add_parsers(commands: Any) -> None:
    """Add ``rules`` and ``alerts`` with their commands to the CLI."""
    _add_rules(commands)
    _add_alerts(commands)


def _add_rules(commands: Any) -> None:
    p = commands.add_parser(
        "rules",
        help="alert rules: create, list, show, delete, test",
        description="Rules over place, time and content; each fires once per asset that meets "
        "it, when the asset is finished (`skyeye alerts`).",
    )
    rule_commands = p.add_subparsers(dest="rules_command", required=True, metavar="COMMAND")
    p = rule_commands.add_parser(
        "create",
        help="make a rule",
        description="Make a rule with one condition. A standing question (--ask) is asked of "
        "every new tile, frame and overview in the rule's area from now on.",
        epilog="examples: skyeye rules create harbour-ships --ask 'Is there a ship?' --fires-on "
        "yes --bbox 3.9,51.8,4.4,52.0 --webhook https://hooks.example.com/skyeye; skyeye rules "
        "create many-cars --detect vehicle --min-count 5; skyeye rules create floods --text "
        "'flood OR flooded'",
    )
    p.add_argument("name", help="the rule's name: letters, digits, _ . - (unique)")
    condition = p.add_mutually_exclusive_group(required=True)
    condition.add_argument("--text", metavar="QUERY", help="fires on a matching caption/answer")
    condition.add_argument("--detect", metavar="PHRASE", help="fires on detections of PHRASE")
    condition.add_argument("--ask", metavar="QUESTION", help="a standing question")
    p.add_argument(
        "--min-count",
        metavar="N",
        type=bounded(int, 1),
        default=1,
        help="with --detect: detections on one asset, at least (default 1)",
    )
    p.add_argument(
        "--fires-on",
        metavar="ANSWER",
        help="with --ask: yes, no, a count comparison ('>= 3') or a phrase the answer contains",
    )
    p.add_argument("--bbox", metavar="W,S,E,N", help="lon/lat area (default: everywhere)")
    p.add_argument(
        "--area", metavar="FILE", help="a GeoJSON (Multi)Polygon file as the area (or --bbox)"
    )
    p.add_argument("--start", help="only imagery at or after this RFC 3339 time")
    p.add_argument("--end", help="only imagery at or before this RFC 3339 time")
    p.add_argument("--asset-kind", choices=[k.value for k in search.AssetKind])
    p.add_argument(
        "--webhook",
        metavar="URL",
        action="append",
        default=[],
        help="POST each alert here, signed (repeat for several)",
    )
    p.add_argument("--json", action="store_true", help="the rule as JSON, secrets included")
    p.set_defaults(func=cmd_create)

    p = rule_commands.add_parser("list", help="every rule")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)
    p = rule_commands.add_parser("show", help="one rule, with its webhooks' state")
    p.add_argument("name", help="a rule's name or id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_show)
    p = rule_commands.add_parser("delete", help="delete a rule (its alerts stay)")
    p.add_argument("name", help="a rule's name or id")
    p.set_defaults(func=cmd_delete)
    p = rule_commands.add_parser(
        "test",
        help="evaluate a rule against stored assets, firing nothing",
        description="Which stored assets the rule would fire on, and why. A standing question "
        "is only answered for assets planned after its rule was made.",
    )
    p.add_argument("name", help="a rule's name or id")
    p.add_argument("--asset", action="append", type=uuid.UUID, help="this asset (repeatable)")
    p.add_argument(
        "--limit",
        type=bounded(int, 1, alert_store.MAX_TESTED),
        default=alert_store.DEFAULT_TESTED,
        help="else the newest LIMIT finished assets the rule's area, time window and asset kind"
        f" admit (default {alert_store.DEFAULT_TESTED})",
    )
    p.add_argument("--json", action="store_true", help="the answer POST /rules/NAME/test gives")
    p.set_defaults(func=cmd_test)


def _add_alerts(commands: Any) -> None:
    p = commands.add_parser("alerts", help="what the rules fired: list, watch, deliveries")
    alert_commands = p.add_subparsers(dest="alerts_command", required=True, metavar="COMMAND")
    p = alert_commands.add_parser("list", help="alerts, newest first")
    p.add_argument("--rule", metavar="NAME", help="of this rule only")
    p.add_argument("--asset", type=uuid.UUID, help="of this asset only")
    p.add_argument("--limit", type=bounded(int, 1, 10_000), default=50)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_alerts)
    p = alert_commands.add_parser(
        "watch",
        help="print alerts (and asset events) as they happen",
        description="Follow the results API's live feed (/api/events); reconnects after a "
        "dropped connection without missing an event. Ctrl-C stops.",
    )
    p.add_argument("--url", help="the API's base URL (default: the running stack's)")
    p.add_argument(
        "--token", help="a read token (default: $SKYEYE_API_TOKEN; `skyeye token create`)"
    )
    p.add_argument("--all", action="store_true", help="asset events too, not only alerts")
    p.add_argument(
        "--after",
        metavar="EVENT_ID",
        help="start after this event (an id printed with --json; default: from now on)",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_watch)
    p = alert_commands.add_parser(
        "deliveries",
        help="the webhook delivery log, newest first",
        description="Each webhook delivery of the alerts: delivered, pending (retried with "
        "backoff) or failed, with every attempt's HTTP status or error, and the endpoint's "
        "state (disabled after failing too often).",
    )
    p.add_argument("--rule", metavar="NAME", help="of this rule's alerts only")
    p.add_argument("--alert", type=uuid.UUID, metavar="ALERT_ID", help="of this alert only")
    p.add_argument("--limit", type=bounded(int, 1, 10_000), default=50)
    p.add_argument("--json", action="store_true", help="every delivery with its attempts")
    p.set_defaults(func=cmd_deliveries)


def _settings(args: argparse.Namespace) -> Settings:
    return resolve(Settings(home=args.home) if args.home else Settings())


@contextmanager
def _catalog(settings: Settings) -> Iterator[Connection]:
    """A connection to the catalog in one transaction, committed when the block ends."""
    assert settings.database_url is not None
    engine = postgres.create_engine(settings.database_url)
    try:
        with engine.begin() as conn:
            yield conn
    finally:
        engine.dispose()


def _listing(
    args: argparse.Namespace,
    found: list[dict[str, Any]],
    nothing: str,
    header: Sequence[str],
    row: Callable[[dict[str, Any]], Sequence[str]],
) -> int:
    """Print catalog rows: as JSON with ``--json``, else a table (``nothing`` when none)."""
    if args.json:
        print(json.dumps(found, indent=2, default=jsonable))
    elif not found:
        print(nothing)
    else:
        print(table([row(f) for f in found], header))
    return 0


def _fail(message: str) -> int:
    print(f"[skyeye] error: {message}", file=sys.stderr, flush=True)
    return 2


def _api_url(args: argparse.Namespace, settings: Settings) -> str | None:
    """The results API's base URL: --url, the public URL, or the running stack's component."""
    if getattr(args, "url", None):
        return str(args.url).rstrip("/")
    if settings.api.public_url:
        return settings.api.public_url.rstrip("/")
    state = read_state(settings.home)
    component = None if state is None else state.component("api")
    return None if component is None or not component.endpoint else component.endpoint


def _spec(args: argparse.Namespace) -> RuleSpec:
    """The rule the options describe; ValueError saying which option is wrong."""
    if problem := rule_name_problem(args.name):
        raise ValueError(f"{args.name!r}: {problem}")
    if args.ask is not None and args.fires_on is None:
        raise ValueError("--ask needs --fires-on (yes, no, '>= 3', or a phrase)")
    if args.fires_on is not None and args.ask is None:
        raise ValueError("--fires-on goes with --ask")
    if args.min_count != 1 and args.detect is None:
        raise ValueError("--min-count goes with --detect")
    fields: dict[str, Any] = {"name": args.name, "condition": _condition(args)}
    if args.bbox is not None:
        fields["bbox"] = search.parse_bbox(args.bbox)
    if args.area is not None:
        try:
            with open(args.area, encoding="utf-8") as f:
                fields["area"] = json.load(f)
        except (OSError, ValueError) as exc:
            raise ValueError(f"--area {args.area}: {exc}") from None
    for option in ("start", "end"):
        if getattr(args, option) is not None:
            fields[option] = search.parse_interval(getattr(args, option))[0]
    if args.asset_kind is not None:
        fields["asset_kind"] = args.asset_kind
    fields["webhooks"] = args.webhook
    try:
        return RuleSpec.model_validate(fields)
    except ValidationError as exc:
        raise ValueError(first_error(exc, "rule")) from None


def _condition(args: argparse.Namespace) -> dict[str, Any]:
    if args.text is not None:
        return {"kind": "text", "query": args.text}
    if args.detect is not None:
        return {"kind": "detection", "phrase": args.detect, "min_count": args.min_count}
    return {"kind": "ask", "question": args.ask, "fires_on": args.fires_on}


def cmd_create(args: argparse.Namespace) -> int:
    """``skyeye rules create``: check and store a rule; print it (secrets only here)."""
    try:
        spec = _spec(args)
    except ValueError as exc:
        return _fail(str(exc))
    settings = _settings(args)
    try:
        with _catalog(settings) as conn:
            made = register(conn, spec, settings, _api_url(args, settings))
    except (InvalidRule, alert_store.RuleExists) as exc:
        return _fail(str(exc))
    if args.json:
        print(json.dumps(made.as_json(), indent=2))
        return 0
    print(f"created rule {made.name!r} ({made.spec.kind.value}, id {made.rule_id})")
    for endpoint in made.endpoints:
        print(f"webhook {endpoint.url}: signing secret {endpoint.secret} (shown only this once)")
    return 0


def _with_rule(
    args: argparse.Namespace, act: Callable[[Connection, alert_store.StoredRule], int]
) -> int:
    """``act`` on the rule ``args.name`` names, in the catalog's transaction; exit 2 if none."""
    with _catalog(_settings(args)) as conn:
        found = alert_store.rule(conn, args.name)
        if found is None:
            return _fail(f"no rule {args.name!r} (see `skyeye rules list`)")
        return act(conn, found)


def _describe(rule: alert_store.StoredRule) -> str:
    c = rule.spec.condition
    if c.kind == "detection":
        what = f"detects {c.phrase!r} >= {c.min_count}"
    elif c.kind == "text":
        what = f"text {c.query!r}"
    else:
        what = f"asks {c.question!r}, fires on {c.fires_on!r}"
    bounds = rule.spec.bounds()
    where = "everywhere" if bounds is None else ",".join(f"{v:g}" for v in bounds)
    return f"{what}; {where}"


def cmd_list(args: argparse.Namespace) -> int:
    """``skyeye rules list``: every rule, by name."""
    with _catalog(_settings(args)) as conn:
        found = alert_store.rules(conn)
    if args.json:
        print(json.dumps([r.as_json() for r in found], indent=2))
        return 0
    if not found:
        print("no rules (make one with `skyeye rules create`)")
        return 0
    rows = [(r.name, r.spec.kind.value, _describe(r), str(len(r.endpoints))) for r in found]
    print(table(rows, ("name", "kind", "condition; area", "webhooks")))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    """``skyeye rules show``: one rule with its webhooks' state."""

    def show(_: Connection, rule: alert_store.StoredRule) -> int:
        print(json.dumps(rule.as_json(), indent=2) if args.json else _shown(rule))
        return 0

    return _with_rule(args, show)


def _shown(rule: alert_store.StoredRule) -> str:
    lines = [f"{rule.name} ({rule.spec.kind.value}, id {rule.rule_id})", f"  {_describe(rule)}"]
    for e in rule.endpoints:
        state = f"disabled: {e.disabled_why}" if e.disabled_at else f"{e.failures} failure(s)"
        lines.append(f"  webhook {e.url} ({state})")
    return "\n".join(lines)


def cmd_delete(args: argparse.Namespace) -> int:
    """``skyeye rules delete``: the rule fires no more; its alerts stay."""
    with _catalog(_settings(args)) as conn:
        gone = alert_store.delete_rule(conn, args.name)
    if gone is None:
        return _fail(f"no rule {args.name!r} (see `skyeye rules list`)")
    print(f"deleted rule {gone.name!r}; its alerts stay")
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    """``skyeye rules test``: which stored assets the rule would fire on; fires nothing."""

    def test(conn: Connection, rule: alert_store.StoredRule) -> int:
        tried = alert_store.trial(conn, rule, args.asset, args.limit)
        if args.json:
            out = {
                "rule": rule.name,
                "assets": tried.assets,
                "fires_on": [
                    {
                        "asset_id": a,
                        "object_key": key,
                        "evidence": [x.model_dump(mode="json") for x in evidence],
                    }
                    for a, key, evidence in tried.fires_on
                ],
                "unknown": tried.unknown,
            }
            print(json.dumps(out, indent=2, default=jsonable))
            return 0
        print(f"{rule.name}: would fire on {len(tried.fires_on)} of {tried.assets} asset(s)")
        for asset_id, key, evidence in tried.fires_on:
            first = evidence[0]
            print(
                f"  {asset_id} ({key}): {len(evidence)} piece(s) of evidence, e.g. tile "
                f"{first.tile_index}: {first.text[:60]!r}"
            )
        for asset_id in tried.unknown:
            print(f"  {asset_id}: no such asset in the catalog")
        return 0

    return _with_rule(args, test)


def cmd_alerts(args: argparse.Namespace) -> int:
    """``skyeye alerts list``: alerts, newest first."""
    with _catalog(_settings(args)) as conn:
        found = alert_store.alerts(conn, args.rule, args.asset, args.limit)
    return _listing(
        args,
        found,
        "no alerts",
        ("fired (UTC)", "rule", "object", "evidence", "webhooks ok"),
        lambda a: (
            a["created_at"].strftime("%Y-%m-%d %H:%M:%S"),
            a["rule_name"],
            a["object_key"],
            str(len(a["evidence"])),
            f"{a['delivered']}/{a['deliveries']}",
        ),
    )


def cmd_deliveries(args: argparse.Namespace) -> int:
    """``skyeye alerts deliveries``: the webhook delivery log, newest first."""
    with _catalog(_settings(args)) as conn:
        rule_id = None
        if args.rule is not None:
            stored = alert_store.rule(conn, args.rule)
            if stored is None:
                return _fail(f"no rule {args.rule!r} (see `skyeye rules list`)")
            rule_id = stored.rule_id
        found = delivery.delivery_log(conn, rule_id=rule_id, alert_id=args.alert, limit=args.limit)
    return _listing(
        args,
        found,
        "no webhook deliveries",
        ("made (UTC)", "rule", "webhook", "status", "tries", "last answer"),
        lambda d: (
            d["created_at"].strftime("%Y-%m-%d %H:%M:%S"),
            d["rule_name"],
            d["url"],
            d["status"] + (" (endpoint disabled)" if d["disabled_at"] else ""),
            str(d["attempts"]),
            _last_answer(d),
        ),
    )


def _last_answer(entry: dict[str, Any]) -> str:
    if entry["last_status_code"] is not None:
        return f"HTTP {entry['last_status_code']}"
    return str(entry["last_error"] or "-")


def cmd_watch(args: argparse.Namespace) -> int:
    """``skyeye alerts watch``: follow the live feed until Ctrl-C."""
    settings = Settings(home=args.home) if args.home else Settings()
    url = _api_url(args, settings)
    if url is None:
        return _fail("no results API to watch: start `skyeye up`, or give --url")
    token = args.token or os.environ.get("SKYEYE_API_TOKEN")
    kinds = None if args.all else ["alert"]
    try:
        following = _reconnecting(lambda last: feed.follow(url, token, kinds, last), args.after)
        for event in following:
            if args.json:
                print(json.dumps(event), flush=True)
            else:
                print(_line(event), flush=True)
    except feed.FeedRefused as exc:
        return _fail(f"the API refused the feed: {exc}")
    return 0


def _reconnecting(
    connect: Callable[[str | None], Iterator[dict[str, Any]]], last: str | None = None
) -> Iterator[dict[str, Any]]:
    """Events from ``connect(last_id)``, connecting again after the last id seen when it drops."""
    while True:
        try:
            for event in connect(last):
                last = event["id"]
                yield event
        except ConnectionError as exc:
            print(f"[skyeye] feed dropped ({exc}); reconnecting", file=sys.stderr, flush=True)
        time.sleep(_RECONNECT_S)


def _line(event: dict[str, Any]) -> str:
    data = event.get("data") or {}
    if event["event"] == "alert":
        alert = data.get("data", {})
        return (
            f"{data.get('timestamp', '')}  ALERT {alert.get('rule_name')}: "
            f"{alert.get('object_key')} ({len(alert.get('evidence', []))} piece(s) of evidence)"
        )
    return f"{event['event']}  {data.get('object_key', data.get('asset_id', ''))}"
