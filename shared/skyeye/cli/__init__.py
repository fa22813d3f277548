"""The ``skyeye`` command line: the embedded stack, ingest, results, dead letters and the model.

:func:`skyeye.cli.main.main` is the entry point; each command group's work lives in its own
module (:mod:`~skyeye.cli.ingest`, :mod:`~skyeye.cli.dlq`, :mod:`~skyeye.cli.model_inspect`).
"""
