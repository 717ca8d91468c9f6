"""The benchmark report: ratios against the targets, stage tables, slice scaling, inference settings.

:func:`compute_ratios` turns the measurements of one study into the ratios the project targets;
:func:`write_report` writes ``benchmark.json`` (everything measured) and ``benchmark.md`` (the same as
tables) into the output folder. All times are wall-clock seconds, all memory MiB (2**20 bytes) of resident
set; ratios are dimensionless and always "how many times better ours is" except where the name says
otherwise (``ingest_vs_simpleitk`` is ours / SimpleITK: at most 1.2 is the target).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from benchmarks import our_path, stock_path
from benchmarks.machine import one_line
from benchmarks.references import SIMPLEITK_STAGE

logger = logging.getLogger(__name__)

JSON_NAME = "benchmark.json"
MARKDOWN_NAME = "benchmark.md"
#: 3 GB, the peak memory bound of a 512 x 512 x 600 study, in MiB.
MEMORY_BOUND_MIB = 3e9 / 2**20


def _stage_seconds(run: dict[str, Any] | None, names: tuple[str, ...] = (), prefix: str | None = None) -> float | None:
    if not run:
        return None
    picked = [s["seconds"] for s in run["stages"] if s.get("part_of") is None
              and (s["name"] in names or (prefix is not None and s["name"].startswith(prefix)))]
    return float(sum(picked)) if picked else None


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def compute_ratios(ours: dict[str, Any], stock: dict[str, Any] | None, references: dict[str, Any] | None,
                   stock_ingest: dict[str, Any] | None = None) -> dict[str, Any]:
    """Figures and ratios of one study from its measurements (each a :mod:`benchmarks.child` result).

    Returns
    -------
    dict
        ``figures`` (seconds, MiB and voxel counts that the ratios compare) and ``targets`` (a list of
        dicts: ``name``, ``ours``, ``reference``, ``ratio``, ``target``, ``met``; the ratio is None when
        a measurement is missing, e.g. the stock path skipped). ``stock_ingest``, a run of the stock
        path's ingest alone, gives the SDK's ingest figure where ``stock`` is None.
    """
    ingest_ours = _stage_seconds(ours, our_path.INGEST_STAGES)
    ingest_sdk = _stage_seconds(stock if stock is not None else stock_ingest, stock_path.INGEST_STAGES)
    simpleitk = _stage_seconds(references, (SIMPLEITK_STAGE,))
    inference_ours = _stage_seconds(ours, prefix=our_path.INFERENCE_PREFIX)
    inference_stock = _stage_seconds(stock, (stock_path.INFERENCE_STAGE,))
    e2e_ours = ours.get("end_to_end_s")
    e2e_stock = stock.get("end_to_end_s") if stock else None
    peak_ours = ours.get("peak_rss_mib")
    peak_stock = stock.get("peak_rss_mib") if stock else None
    voxels = ours["result"].get("voxels", {})
    full, crops = voxels.get("full_volume"), voxels.get("femur_crops")
    targets = [
        dict(name="study ingest: SDK loader + selector + volume / ours (scan + select + decode)",
             ours=ingest_ours, reference=ingest_sdk, ratio=_ratio(ingest_sdk, ingest_ours), target=">= 3"),
        dict(name="study ingest: ours / SimpleITK reading the chosen series alone",
             ours=ingest_ours, reference=simpleitk, ratio=_ratio(ingest_ours, simpleitk), target="<= 1.2"),
        dict(name="lesion inference: whole volume / two femur crops",
             ours=inference_ours, reference=inference_stock, ratio=_ratio(inference_stock, inference_ours),
             target=">= 5"),
        dict(name="end to end: stock path / ours", ours=e2e_ours, reference=e2e_stock,
             ratio=_ratio(e2e_stock, e2e_ours), target=">= 4"),
        dict(name="peak memory: stock path / ours", ours=peak_ours, reference=peak_stock,
             ratio=_ratio(peak_stock, peak_ours), target="> 1"),
        dict(name="peak memory: 3 GB / ours", ours=peak_ours, reference=MEMORY_BOUND_MIB,
             ratio=_ratio(MEMORY_BOUND_MIB, peak_ours), target="> 1"),
    ]
    for target in targets:
        ratio, wanted = target["ratio"], target["target"]
        if ratio is None:
            target["met"] = None
        elif wanted.startswith(">="):
            target["met"] = ratio >= float(wanted[2:])
        elif wanted.startswith("<="):
            target["met"] = ratio <= float(wanted[2:])
        else:
            target["met"] = ratio > float(wanted[1:])
    figures = {
        "ingest_ours_s": ingest_ours, "ingest_sdk_s": ingest_sdk, "simpleitk_s": simpleitk,
        "inference_ours_s": inference_ours, "inference_stock_s": inference_stock,
        "end_to_end_ours_s": e2e_ours, "end_to_end_stock_s": e2e_stock,
        "peak_ours_mib": peak_ours, "peak_stock_mib": peak_stock,
        "voxels_full_volume": full, "voxels_femur_crops": crops, "voxels_femur_mask": voxels.get("femur_mask"),
        "voxels_full_over_crops": _ratio(full, crops),
    }
    return {"figures": figures, "targets": targets}


# ------------------------------------------------------------------------------------------ Markdown


def _num(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _met(met: bool | None) -> str:
    return "n/a" if met is None else ("yes" if met else "**no**")


def _stage_table(run: dict[str, Any]) -> list[str]:
    lines = ["| stage | time (s) | peak RSS during stage (MiB) |", "|---|---:|---:|"]
    for stage in run["stages"]:
        name = f"&nbsp;&nbsp;{stage['name']} (part of {stage['part_of']})" if stage.get("part_of") else stage["name"]
        peak = "-" if stage["peak_rss_mib"] is None else _num(stage["peak_rss_mib"], 0)
        lines.append(f"| {name} | {_num(stage['seconds'])} | {peak} |")
    lines.append(f"| **end to end** | **{_num(run['end_to_end_s'])}** | **{_num(run['peak_rss_mib'], 0)}** "
                 "(process peak) |")
    return lines


def _study_section(entry: dict[str, Any]) -> list[str]:
    study, ratios = entry["study"], entry["ratios"]
    z, y, x = study["shape_zyx"]
    lines = [f"## Study: {study['label']}", "",
             f"{study['n_series']} series, {study['n_files']} DICOM files; thin series {z} x {y} x {x} "
             f"(slices, rows, columns), spacing {' x '.join(f'{s:g}' for s in study['spacing_zyx_mm'])} mm.", ""]
    same = entry.get("same_series")
    if same is not None:
        lines += [f"Both paths chose the same series: {'yes' if same else '**no**'}.", ""]
    lines += ["### Targets (ratios from this run)", "",
              "| measure | ours | reference | ratio | target | met |", "|---|---:|---:|---:|---|---|"]
    for t in ratios["targets"]:
        unit = " MiB" if "memory" in t["name"] else " s"
        lines.append(f"| {t['name']} | {_num(t['ours'])}{unit} | {_num(t['reference'])}{unit} | "
                     f"{_num(t['ratio'])} | {t['target']} | {_met(t['met'])} |")
    f = ratios["figures"]
    lines += ["", "### Voxels sent to the network", "",
              f"Full CT volume {f['voxels_full_volume'] or 0:,} voxels; "
              f"our two femur crops {f['voxels_femur_crops'] or 0:,} "
              f"({_num(f['voxels_full_over_crops'], 1)} times fewer), of which {f['voxels_femur_mask'] or 0:,} femur "
              "voxels (nnU-Net's crop to non-zero keeps about those). The stock path sends the full volume.", ""]
    lines += ["### Our path", "", *_stage_table(entry["ours"]), ""]
    if entry.get("stock"):
        lines += ["### Stock MONAI Deploy path", "", *_stage_table(entry["stock"]), ""]
    elif entry.get("stock_ingest"):
        lines += ["### Stock MONAI Deploy path (ingest only)", "", *_stage_table(entry["stock_ingest"]), ""]
    if entry.get("references"):
        lines += ["### Reference decoders (chosen series alone)", "", *_stage_table(entry["references"])[:-1], ""]
        for stage, error in entry["references"]["result"].get("errors", {}).items():
            lines.append(f"- {stage} failed: {error}")
    return lines


def _scaling_section(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["## Growth with the number of slices", "",
             "Same patient, slice spacing chosen for the number of slices. Ingest = scan + select + decode "
             "(ours) or loader + selector + volume (SDK).", "",
             "| slices | shape (z, y, x) | ours ingest (s) | ours end to end (s) | ours peak (MiB) | SDK ingest (s) "
             "| SDK ingest peak (MiB) | SimpleITK decode (s) |", "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        ours, sdk, refs = row["ours"], row.get("stock_ingest"), row.get("references")
        lines.append(
            f"| {row['study']['shape_zyx'][0]} | {' x '.join(map(str, row['study']['shape_zyx']))} | "
            f"{_num(_stage_seconds(ours, our_path.INGEST_STAGES))} | {_num(ours['end_to_end_s'])} | "
            f"{_num(ours['peak_rss_mib'], 0)} | {_num(_stage_seconds(sdk, stock_path.INGEST_STAGES))} | "
            f"{_num(sdk['peak_rss_mib'], 0) if sdk else 'n/a'} | {_num(_stage_seconds(refs, (SIMPLEITK_STAGE,)))} |")
    return lines + [""]


def _settings_section(table: dict[str, Any]) -> list[str]:
    result = table["result"]
    lines = ["## Inference settings: speed and accuracy", "",
             f"Held-out `{result['preset']}` synthetic studies, seeds {', '.join(map(str, result['seeds']))} "
             f"({len(result['femurs'])} femurs); mean lesion Dice over femurs with a lesion.", "",
             "| setting | s per femur | speed-up | mean lesion Dice | lesion-free femurs predicted empty |",
             "|---|---:|---:|---:|---|"]
    rows = result["rows"]
    base = rows[0]["seconds_per_femur"] if rows else None
    for row in rows:
        speed_up = _num(_ratio(base, row["seconds_per_femur"]), 1)
        lines.append(f"| {row['setting']} | {_num(row['seconds_per_femur'])} | {speed_up} | "
                     f"{_num(row['mean_lesion_dice'], 3)} | "
                     f"{row['lesion_free_predicted_empty']}/{row['lesion_free_femurs']} |")
    return lines + ["", "Fast mode for CPU-only sites: `FEMUR_LESION_MIRRORING=0` (test-time mirroring off).", ""]


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown."""
    s = report["settings"]
    lines = ["# Benchmark: femur lesion segmentation against the stock MONAI Deploy path", "",
             f"Run {report['created']}.", "",
             f"**Machine:** {one_line(report['machine'])}.", "",
             f"**Model:** {s['model_name']} {s['model_version']} ({s['model_source']}); device {s['device']}, "
             f"test-time mirroring {'on' if s['use_mirroring'] else 'off'}, tile step {s['tile_step_size']:g}, "
             f"input resampling {s.get('input_resampling', 'plans')}; "
             f"the same model and settings on both paths.", "",
             f"**Processes:** each path in its own fresh process pinned to {s['cores']} CPU core(s), imports before "
             "the clock starts; end to end runs from the model load to the last output written. "
             f"**Memory:** per stage, {s['memory_method']}; per path, the process's peak resident set (the largest stage peak, or ru_maxrss if larger).",
             "",
             "Our path writes the SEG, SR, report.json, summary.txt and overview.png; the stock path the SEG only. "
             "Ratios compare figures of the same run: on a shared machine seconds vary from run to run.", ""]
    lines += _study_section(report["main"])
    if report.get("scaling"):
        lines += _scaling_section(report["scaling"])
    if report.get("settings_table"):
        lines += _settings_section(report["settings_table"])
    return "\n".join(lines).rstrip() + "\n"


def write_report(report: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Write ``benchmark.json`` and ``benchmark.md`` into ``out_dir`` (each atomically); returns both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in ((JSON_NAME, json.dumps(report, indent=2) + "\n"), (MARKDOWN_NAME, markdown(report))):
        path = out_dir / name
        tmp = out_dir / f".{name}.partial"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
        paths.append(path)
    return paths[0], paths[1]
