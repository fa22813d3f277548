"""Dead letters: the messages a consumer gave up on, listed and replayed.

A consumer that cannot handle a message (see ``skyeye.services._runtime``) copies it to the
dead-letter topic and indexes it in the catalog's ``dead_letters`` table. A replay publishes the
original message again, key, value and headers, to the topic it came from, with one more header
naming the dead letter: the consumer that receives it first reopens what the dead letter ended
(the failed work item, or the asset whose planning failed), so the message is handled in full
again, and writes that already happened are not made twice.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from skyeye import catalog
from skyeye.adapters import kafka
from skyeye.adapters.postgres import Engine
from skyeye.contracts import DeadLetterHeader

__all__ = ["DeadLetterNotFound", "Replayed", "find", "pending", "replay"]

# The shortest id prefix accepted, as `skyeye dlq list` prints ids.
MIN_PREFIX = 8


class DeadLetterNotFound(LookupError):
    """An id (or prefix) that names no dead letter, or more than one."""


@dataclass(frozen=True)
class Replayed:
    """A dead letter's message published again, and where the broker stored it."""

    dead_letter_id: uuid.UUID
    topic: str
    partition: int
    offset: int


def find(engine: Engine, selectors: Sequence[str]) -> list[uuid.UUID]:
    """The dead letters named by full ids or unique prefixes of at least 8 characters."""
    with engine.connect() as conn:
        known = [row["dead_letter_id"] for row in catalog.dead_letters(conn)]
    found = []
    for selector in selectors:
        text = selector.strip().lower()
        if len(text) < MIN_PREFIX:
            raise DeadLetterNotFound(
                f"{selector!r}: give at least {MIN_PREFIX} characters of a dead letter id"
            )
        matches = [i for i in known if str(i).startswith(text)]
        if len(matches) != 1:
            what = "no dead letter" if not matches else f"{len(matches)} dead letters"
            raise DeadLetterNotFound(f"{selector!r} names {what} (see `skyeye dlq list`)")
        found.append(matches[0])
    return list(dict.fromkeys(found))


def pending(engine: Engine) -> list[uuid.UUID]:
    """The dead letters never replayed, oldest first."""
    with engine.connect() as conn:
        return [row["dead_letter_id"] for row in catalog.dead_letters(conn) if not row["replays"]]


def replay(
    engine: Engine, producer: kafka.Producer, dead_letter_ids: Sequence[uuid.UUID]
) -> list[Replayed]:
    """Publish each dead letter's message again to its original topic; returns where each landed.

    A replay is recorded once the broker has it.
    """
    done = []
    for dead_letter_id in dead_letter_ids:
        with engine.connect() as conn:
            letter = catalog.dead_letter(conn, dead_letter_id)
        if letter is None:
            raise DeadLetterNotFound(f"no dead letter {dead_letter_id}")
        headers = [
            (name, value)
            for name, value in letter.headers
            if name != DeadLetterHeader.REPLAY_OF.value
        ]
        headers.append((DeadLetterHeader.REPLAY_OF.value, str(dead_letter_id).encode()))
        sent = kafka.publish(
            producer, letter.topic, key=letter.key, value=letter.payload, headers=headers
        )
        with engine.begin() as conn:
            catalog.mark_replayed(conn, dead_letter_id)
        done.append(Replayed(dead_letter_id, letter.topic, sent.partition, sent.offset))
    return done
