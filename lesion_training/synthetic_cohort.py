"""A synthetic training cohort: phantoms generated in memory and fed through the dataset builder.

Each seed gives one patient ``syn<seed>``: :func:`synthetic_ct.generate_phantom` makes a lower-body CT
and its label map in memory (nothing is written as DICOM), and :func:`lesion_training.dataset_builder.process_study`
turns it into femur cases exactly as it does for real studies: the femurs are cut out by the
application's splitter (not taken from the phantom's true femur masks), so training sees the crops
inference will see, and the lesion (3) and cyst (4) labels are cut and restricted the same way.

The model is also scored on studies of another, unseen generator, so the cohort is drawn wide
(:func:`cohort_overrides`): in-plane pixels 1.2-1.9 mm and slices 1.5-3 mm (the ``small`` training
configuration resamples to at least 2.0 x 1.6 x 1.6 mm, so finer grids would only cost time), field
of view 400-500 mm, noise 5-45 HU, all tube voltages, with and without contrast, head- or feet-first,
both slice orders, knees in view or not, one femur in view now and then, 0-4 lesions per patient and
cysts in a third of them. Anatomy, lesion shape, density and texture vary with the seed as the
generator draws them.

Measured on a 2-core machine: ~25 s per patient (generation ~10 s, femur split ~15 s); with two
worker processes 40 patients take about 9 minutes.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np

from lesion_training.dataset_builder import (
    SYNTHETIC_REFERENCE,
    BuildOptions,
    BuiltDataset,
    DatasetBuilder,
    StudyRecord,
    process_study,
)

logger = logging.getLogger(__name__)

#: Label values of the synthetic label map (docs/CONVENTIONS.md).
SYNTHETIC_LESION = 3
SYNTHETIC_CYST = 4
#: Patient key prefix of synthetic patients: ``syn<seed>``.
PATIENT_PREFIX = "syn"

# Ranges of the cohort's draws (see the module docstring).
PIXEL_SPACING_MM = (1.2, 1.9)
SLICE_SPACING_MM = (1.5, 3.0)
FIELD_OF_VIEW_MM = (400.0, 500.0)
NOISE_SD_HU = (5.0, 45.0)
LESION_COUNTS = (0, 1, 2, 3, 4)
LESION_COUNT_P = (0.15, 0.3, 0.25, 0.15, 0.15)
CYST_PROBABILITY = 0.35
ONE_FEMUR_PROBABILITY = 0.1
NO_KNEES_PROBABILITY = 0.25


def parse_seeds(text: str) -> list[int]:
    """Seeds from ``"A-B"`` (inclusive), ``"A,B,C"`` or a mix (``"1000-1019,1030"``)."""
    seeds: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part:
                first, last = (int(v) for v in part.split("-", 1))
                if last < first:
                    raise ValueError
                seeds.extend(range(first, last + 1))
            else:
                seeds.append(int(part))
        except ValueError:
            raise ValueError(f"seeds must look like 'A-B' or 'A,B,C' with A <= B, got {text!r}") from None
    if not seeds or min(seeds) < 0:
        raise ValueError(f"seeds must be non-negative integers, got {text!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds repeat in {text!r}")
    return seeds


def cohort_overrides(seed: int) -> dict[str, Any]:
    """The :func:`synthetic_ct.generate_phantom` overrides of the cohort's patient ``seed``.

    Drawn from their own generator (seeded with ``seed``), so that they are reproducible and do not
    disturb the phantom's own draws. Everything not listed (anatomy, lesion shapes and densities,
    kVp, contrast, patient position, slice order, storage) is left to the phantom's seed.
    """
    rng = np.random.default_rng([seed, 0xC0407])
    pixel = float(np.round(rng.uniform(*PIXEL_SPACING_MM), 3))
    fov = float(rng.uniform(*FIELD_OF_VIEW_MM))
    overrides: dict[str, Any] = {
        "pixel_spacing": pixel,
        "matrix": int(math.ceil(fov / pixel / 8.0) * 8),
        "slice_spacing": float(np.round(rng.uniform(*SLICE_SPACING_MM), 2)),
        "noise_sd": float(np.round(rng.uniform(*NOISE_SD_HU), 1)),
        "lesions": int(rng.choice(LESION_COUNTS, p=LESION_COUNT_P)),
        "cysts": bool(rng.uniform() < CYST_PROBABILITY),
        "knees_in_view": bool(rng.uniform() >= NO_KNEES_PROBABILITY),
    }
    if rng.uniform() < ONE_FEMUR_PROBABILITY:
        overrides["femurs_in_view"] = (str(rng.choice(["left", "right"])),)
    return overrides


def synthetic_study(seed: int, raw_dir: str | Path, options: BuildOptions, preset: str = "standard") -> StudyRecord:
    """Generate patient ``seed`` in memory and write its femur cases into ``raw_dir`` (a builder's staging).

    Returns the :class:`~lesion_training.dataset_builder.StudyRecord`, with the overrides in ``source``.
    """
    from synthetic_ct import generate_phantom

    started = time.perf_counter()
    overrides = cohort_overrides(seed)
    phantom = generate_phantom(seed, preset, **overrides)
    labels = np.asarray(phantom.labels.array)
    generated = time.perf_counter() - started
    record = process_study(raw_dir, f"{PATIENT_PREFIX}{seed}", phantom.ct, labels == SYNTHETIC_LESION,
                           labels == SYNTHETIC_CYST, options)
    record.source = f"synthetic_ct seed {seed}, preset {preset}, " + ", ".join(
        f"{k}={v}" for k, v in overrides.items())
    record.seconds = time.perf_counter() - started
    logger.debug("seed %d: generated in %.1f s, %.1f s in all", seed, generated, record.seconds)
    return record


def build_synthetic_dataset(
    seeds: Sequence[int],
    folder: str | Path,
    *,
    cysts: str = "separate",
    test_fraction: float = 0.0,
    n_folds: int = 5,
    workers: int = 1,
    preset: str = "standard",
) -> BuiltDataset:
    """Build an nnU-Net raw dataset from synthetic patients ``seeds``.

    Parameters
    ----------
    seeds : sequence of int
        One patient per seed (``syn<seed>``).
    folder : str or Path
        Destination ``.../DatasetXXX_Name`` (must not exist).
    cysts : "separate" or "background"
        Cysts as label 2 or background.
    test_fraction : float
        Fraction of patients held out into ``imagesTs`` (default 0: evaluate on separate seeds).
    n_folds : int
        Cross-validation folds of ``splits_final.json``.
    workers : int
        Worker processes (each uses one thread); 1 runs in this process.
    preset : str
        Base preset of the generator (its scanner ranges are overridden by the cohort's draws).

    Returns
    -------
    BuiltDataset
    """
    options = BuildOptions(cysts=cysts, references=SYNTHETIC_REFERENCE)  # type: ignore[arg-type]
    builder = DatasetBuilder(folder, options)
    started = time.perf_counter()
    seeds = list(seeds)

    def done(k: int, record: StudyRecord) -> None:
        builder.add_record(record)
        elapsed = time.perf_counter() - started
        eta = elapsed / k * (len(seeds) - k)
        logger.info("patient %d/%d %s: %d case(s) in %.1f s | elapsed %.0f s, ETA %.0f s", k, len(seeds),
                    record.patient, len(record.cases), record.seconds, elapsed, eta)

    try:
        if workers <= 1:
            for k, seed in enumerate(seeds, start=1):
                done(k, synthetic_study(seed, builder.staging, options, preset))
        else:
            with ProcessPoolExecutor(max_workers=workers, initializer=_single_threaded) as pool:
                futures = [pool.submit(synthetic_study, seed, builder.staging, options, preset) for seed in seeds]
                for k, future in enumerate(as_completed(futures), start=1):
                    done(k, future.result())
        dataset = builder.finish(
            test_fraction=test_fraction, n_folds=n_folds,
            description="Synthetic femur-only CT crops (synthetic_ct phantoms, HU inside the femur, 0 outside) "
                        "in HPL orientation, one case per femur; lytic lesions" + (
                            " and cysts" if cysts == "separate" else ""),
            license="CC0-1.0",
            extra={"synthetic_seeds": f"{min(seeds)}-{max(seeds)}" if seeds == list(range(min(seeds), max(seeds) + 1))
                   else ",".join(map(str, seeds))},
        )
    except BaseException:
        builder.abandon()
        raise
    logger.info("synthetic cohort of %d patients in %.1f min", len(seeds), (time.perf_counter() - started) / 60)
    return dataset


def _single_threaded() -> None:
    # Worker processes share the machine's cores: one thread each.
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover - torch is a dependency of training
        pass
