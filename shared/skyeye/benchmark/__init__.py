"""``skyeye bench``: what the pipeline costs against the bare model, measured in one run.

One model, one machine, generated images; the figures (raw vs pipeline tiles/s, encoder calls
per tile, encoder and decoder rates, latency under load, autoscaling, tiling) are described in
``bench/README.md``. :mod:`skyeye.benchmark.runner` runs the phases; each module measures one
thing. The bench starts its own embedded stack in a scratch state folder and never touches a
user's.
"""

__all__ = ["PHASES"]

#: The phases of a run, in the order they run (``skyeye bench --only`` picks some); see
#: :mod:`skyeye.benchmark.runner`. Here, so the CLI names them without importing torch.
PHASES = ("tiling", "model", "pipeline", "latency", "workers", "autoscaling")
