"""Offline validation of STAC Items and label GeoJSON with stac-validator.

Every schema URL these documents reach is mapped to a copy vendored under tests/schemas, laid out
by URL (see its README), and any attempt to fetch a schema over the network fails the check, so
a pass never depends on (or silently skips) a download. The STAC extension schemas (label,
projection) are in no package on a registry this project can reach, so offline validation
covers the core Item schema and GeoJSON; :func:`validate_item_online` adds the extensions where
the schema hosts are reachable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from unittest import mock

import requests
from stac_validator.utilities import validate_with_ref_resolver
from stac_validator.validate import StacValidate

SCHEMAS = Path(__file__).parent / "schemas"
SCHEMA_MAP = {
    f"https://{path.relative_to(SCHEMAS).as_posix()}": str(path)
    for path in sorted(SCHEMAS.rglob("*.json"))
}
FEATURE_COLLECTION = "https://geojson.org/schema/FeatureCollection.json"


def _offline() -> mock._patch[Any]:
    return mock.patch.object(
        requests, "get", side_effect=AssertionError("schema fetched over the network")
    )


def validate_item(item: dict[str, Any]) -> list[str]:
    """Check ``item`` against the STAC 1.1.0 Item schema; returns the schemas it used."""
    validator = StacValidate(core=True, schema_map=dict(SCHEMA_MAP))
    with _offline():
        valid = validator.validate_dict(item)
    [message] = validator.message
    assert valid, message
    assert all(Path(s).is_file() for s in message["schema"]), message
    return message["schema"]


def validate_feature_collection(collection: dict[str, Any]) -> None:
    """Check ``collection`` against the GeoJSON FeatureCollection schema, through the same
    resolver stac-validator uses for its schemas (a label GeoJSON is no STAC object, so
    stac-validator's own entry points refuse it for lacking ``stac_version``)."""
    with _offline():
        validate_with_ref_resolver(FEATURE_COLLECTION, collection, schema_map=dict(SCHEMA_MAP))


def validate_item_online(item: dict[str, Any]) -> list[str]:
    """Core and every declared extension, schemas fetched from their published URLs."""
    validator = StacValidate()
    valid = validator.validate_dict(item)
    [message] = validator.message
    assert valid, message
    return message["schema"]
