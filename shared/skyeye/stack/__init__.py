"""The embedded stack behind ``skyeye up``: nanio (S3), tansu (Kafka), PostgreSQL and a Ray head.

Each is a real server on 127.0.0.1, supervised from one process and recorded in
``HOME/stack.json`` so that other processes can find them (:func:`resolve`).
"""

from skyeye.stack.errors import StackError, StackLocked, StackNotRunning
from skyeye.stack.ray_env import RAY_LOOPBACK_ENV, use_loopback_ray
from skyeye.stack.state import ComponentState, Endpoints, StackState, read_state, resolve
from skyeye.stack.supervisor import RestartPolicy, Stack

__all__ = [
    "RAY_LOOPBACK_ENV",
    "ComponentState",
    "Endpoints",
    "RestartPolicy",
    "Stack",
    "StackError",
    "StackLocked",
    "StackNotRunning",
    "StackState",
    "read_state",
    "resolve",
    "use_loopback_ray",
]
