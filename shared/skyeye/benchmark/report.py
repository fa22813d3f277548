"""A bench report as people read it: a heading, then one row per figure.

The report itself (:func:`skyeye.benchmark.runner.run`) is the JSON ``skyeye bench --json``
prints; this only words it. Figures a run did not measure are left out.
"""

from __future__ import annotations

from typing import Any

__all__ = ["heading", "rows", "timeline_rows"]


def heading(report: dict[str, Any]) -> str:
    """What ran on what: mode, model, machine and how busy it was."""
    m = report["machine"]
    gpu = m["gpu"] or "no GPU"
    steps = report["settings"]["decoding"]["steps"]
    return (
        f"skyeye bench ({report['mode']}): {report['model']} ({steps} decoding steps) on "
        f"{m['platform']}, "
        f"{m['cpu_count']} CPUs, {m['memory_gib']} GiB, torch {m['torch']} "
        f"({m['torch_threads']} threads), {gpu}; 1-min load at start {m['load_1m_at_start']}"
    )


def _load(figure: dict[str, Any]) -> str:
    before, after = figure["load_1m"]
    return f"load {before:g}->{after:g}"


def _f(value: float | None, digits: int = 2, unit: str = "") -> str:
    return "-" if value is None else f"{value:.{digits}f}{unit}"


def _model_rows(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    out = []
    for key, label in (("raw", "one tile at a time"), ("raw_batched", "tiles decoded together")):
        if key in report:
            r = report[key]
            out.append(
                (
                    f"raw model tiles/s ({label})",
                    _f(r["tiles_per_s"]),
                    f"best of {len(r['runs_tiles_per_s'])}, {r['tiles']} tiles x "
                    f"{r['tasks_per_tile']} tasks, encoder batch {r['encoder_batch']}, "
                    f"{r['tokens_per_s']:.0f} tokens/s; {_load(r)}",
                )
            )
    if "encoder" in report:
        e = report["encoder"]
        batched = e[f"batch_{e['batch']}_images_per_s"]
        out.append(
            (
                f"encoder images/s, batch 1 / {e['batch']}",
                f"{_f(e['batch_1_images_per_s'])} / {_f(batched)}",
                f"{e['images']} images, x{e['batch_speedup']:.2f}; {_load(e)}",
            )
        )
    if "decoder" in report:
        d = report["decoder"]
        ways = ("no_reuse", "prefix_reuse", "tiles_batched")
        conditions = (
            f"{d['tiles']} tiles x {d['tasks_per_tile']} tasks, same answers "
            f"{'yes' if d['same_answers'] else 'NO'}; {_load(d)}"
        )
        for measure in ("tasks_per_s", "tokens_per_s"):
            out.append(
                (
                    f"decoder {measure.replace('_per_s', '/s')}: no reuse / prefix / batched",
                    " / ".join(_f(d[w][measure], 1) for w in ways),
                    conditions,
                )
            )
    return out


def _stack_rows(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    out = []
    if "pipeline" in report:
        p = report["pipeline"]
        out.append(
            (
                "pipeline tiles/s (warm)",
                _f(p["tiles_per_s"]),
                f"{p['tiles']} tiles, first upload to last asset done; {_load(p)}",
            )
        )
        if "pipeline_raw_ratio" in report:
            out.append(("pipeline_raw_ratio", _f(report["pipeline_raw_ratio"]), "pipeline / raw"))
        out.append(
            (
                "encoder_calls_per_tile",
                _f(report["encoder_calls_per_tile"]),
                f"{p['encoder_calls']:.0f} VisionEncoder requests, with a standing question",
            )
        )
        if "cpu" in p:
            c = p["cpu"]
            top = ", ".join(f"{name} {ms:.0f}" for name, ms in list(c["ms_per_tile"].items())[:6])
            out.append(
                (
                    "pipeline CPU ms/tile, cores busy",
                    f"{_f(c['total_ms_per_tile'], 0)}, {_f(c['cores_busy'] * 100, 0, ' %')}",
                    f"of {c['cores']} cores; most: {top}",
                )
            )
    for run in report.get("latency", []):
        out.append(
            (
                f"latency p50/p95/p99 s at {run['load']:.0%} load",
                f"{_f(run['p50_s'])} / {_f(run['p95_s'])} / {_f(run['p99_s'])}",
                f"{run['assets']} images at {run['offered_tiles_per_s']:.2f} tiles/s; {_load(run)}",
            )
        )
    if "workers" in report:
        w = report["workers"]
        for run in w["runs"]:
            out.append(
                (
                    f"pipeline tiles/s with {run['workers']} worker(s)",
                    _f(run["tiles_per_s"]),
                    f"{run['tiles']} tiles; items per worker {run['items_per_worker']}",
                )
            )
    if "autoscaling" in report:
        a = report["autoscaling"]
        for stage, s in a["stages"].items():
            up = "never" if s["to_peak_s"] is None else f"{s['to_peak_s']:.1f} s"
            if s["to_peak_s"] is None:
                down = "-"
            elif s["back_to_start_s"] is None:
                down = f"not within {a['settle_wait_s']:g} s of waiting"
            else:
                down = f"{s['back_to_start_s']:.1f} s"
            out.append(
                (
                    f"{stage} replicas in a burst",
                    f"{s['start']} -> {s['peak']} -> {s['end']}",
                    f"peak at {up}, back at {down} ({a['assets']} images, done at "
                    f"{a['burst_done_s']:.1f} s); {_load(a)}",
                )
            )
    return out


def rows(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(figure, value, conditions) for every figure in the report, in the phases' order."""
    out = []
    if "tiling" in report:
        t = report["tiling"]
        out.append(
            (
                "planner tiling tiles/s, peak RSS",
                f"{t['tiles_per_s']:.1f}, {t['peak_rss_mib']:.0f} MiB",
                f"{t['read']} tiles of {t['tile_size']} px from a {t['size']} px scene; {_load(t)}",
            )
        )
    return [*out, *_model_rows(report), *_stack_rows(report)]


def timeline_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The burst's replicas over time, a header and one row per change.

    A cell is the running replicas, with ``+N`` for those starting.
    """
    samples = report["autoscaling"]["timeline"]
    stages = sorted({stage for s in samples for stage in s["replicas"]})

    def cell(counts: dict[str, int] | None) -> str:
        if counts is None:
            return "-"
        starting = f"+{counts['starting']}" if counts["starting"] else ""
        return f"{counts['running']}{starting}"

    rows = [[f"{s['t_s']:.1f}", *(cell(s["replicas"].get(k)) for k in stages)] for s in samples]
    return ["t_s", *stages], rows
