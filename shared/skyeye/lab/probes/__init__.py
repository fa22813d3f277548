"""Research probes into skyeye-tiny's grounding and colour errors (``python -m
skyeye.lab.probes.<name> --help``); their findings are in ``docs/skyeye-tiny.md``."""
