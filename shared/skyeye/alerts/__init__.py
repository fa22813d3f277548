"""Alerts: rules over place, time and content, and how their alerts reach people.

:mod:`skyeye.alerts.rules` is the contract of a rule and its conditions. The catalog stores rules
and alerts (:mod:`skyeye.catalog.alerts`), the planner adds standing questions to work items, the
finisher fires rules in the transaction that finishes an asset, the relay publishes the outbox to
Kafka and the deliverer sends webhooks.
"""

from skyeye.alerts.rules import (
    AnswerTest,
    AskCondition,
    AssetKind,
    Condition,
    DetectionCondition,
    RuleKind,
    RuleSpec,
    TextCondition,
    rule_name_problem,
)

__all__ = [
    "AnswerTest",
    "AskCondition",
    "AssetKind",
    "Condition",
    "DetectionCondition",
    "RuleKind",
    "RuleSpec",
    "TextCondition",
    "rule_name_problem",
]
