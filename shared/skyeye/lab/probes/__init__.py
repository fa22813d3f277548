"""Research probes into skyeye-tiny's grounding and colour errors, one script each.

Run one as ``python -m skyeye.lab.probes.<name> --help``; their findings are in
``docs/skyeye-tiny.md``.
"""
