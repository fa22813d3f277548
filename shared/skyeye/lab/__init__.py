"""The demo model's lab: the procedural aerial world, training and evaluation of skyeye-tiny.

Research code, kept apart from the runtime the way torchgeo keeps its experiments outside its
package: only ``skyeye model train`` / ``skyeye model eval``, the probes and the tests import it,
never a service (``tests/unit/test_layers.py`` checks that).
"""
