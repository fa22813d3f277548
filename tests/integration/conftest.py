"""One real pipeline per test session: nanio, tansu, embedded PostgreSQL, Ray Serve, consumers."""

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

from skyeye import telemetry
from skyeye.adapters import postgres
from skyeye.pipeline import launch
from skyeye.settings import DecodingSettings, Settings
from skyeye.stack import Stack, resolve


@dataclass
class Pipeline:
    stack: Stack
    settings: Settings
    engine: sa.Engine
    home: Path


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    home = tmp_path_factory.mktemp("skyeye-home")
    settings = Settings(
        home=home,
        grounding_phrases=["building", "river"],
        vqa_questions=["Is there any water in the image?"],
        decoding=DecodingSettings(max_new_tokens=12),
    )
    telemetry.setup("skyeye-tests", home)
    stack = launch(settings, progress=lambda msg: print(f"[pipeline] {msg}"))
    try:
        resolved = resolve(settings)
        assert resolved.database_url is not None
        engine = postgres.create_engine(resolved.database_url)
        yield Pipeline(stack, resolved, engine, home)
        engine.dispose()
    finally:
        stack.stop()
