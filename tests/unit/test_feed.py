"""The live feed's client side: Server-Sent Events parsed as the CLI's `alerts watch` reads them."""

from skyeye.adapters.feed import _events


def test_events_are_parsed_and_comments_and_incomplete_ones_skipped() -> None:
    stream = [
        ": keep-alive",
        "",
        "id: 7",
        "event: alert",
        'data: {"type": "alert.fired",',
        'data:  "data": {"rule_name": "ships"}}',
        "",
        "retry: 1000",
        "",
        "id: 8",
        "event: asset.finished",
        "data: not json",
        "",
        "event: no-id",
        "data: {}",
        "",
        "id: 9",
        "data: {}",
    ]
    assert list(_events(iter(stream))) == [
        {
            "id": "7",
            "event": "alert",
            "data": {"type": "alert.fired", "data": {"rule_name": "ships"}},
        },
        {"id": "8", "event": "asset.finished", "data": "not json"},
    ]
