"""One measurement in a fresh process: ``python -m benchmarks.child SPEC.json``.

Each path runs in its own process so that its peak memory (``ru_maxrss``) is its own, and so that nothing
one path loaded or cached helps the other. The process is pinned to ``cores`` CPUs (``sched_setaffinity``)
and torch, OpenMP and BLAS use that many threads. Heavy modules are imported before the clock starts:
end to end is the wall time from the first stage to the last file written.

The spec (JSON) holds ``kind`` (``ours``, ``stock``, ``references`` or ``settings``), ``result`` (where
the result JSON goes), ``cores``, and per kind ``dicom_dir``, ``out_dir``, ``model`` (a
:class:`benchmarks.model.ModelSettings` as a dict, or null for the ingest alone) or the settings table's
``table`` (see :func:`benchmarks.settings_table.run_settings_table`).
"""

from __future__ import annotations

import gc
import json
import logging
import os
import resource
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: Thread-count variables set for the child, before numpy or torch load.
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "nnUNet_n_proc_DA")
_STACK_BYTES = 32 * 1024 * 1024  # Holoscan wants 32 MB of stack (ulimit -s 32768)


class ChildFailed(RuntimeError):
    """A benchmark process exited with an error; the message ends with its log's last lines."""


def child_environment(cores: int) -> dict[str, str]:
    """Environment of a benchmark process: thread counts, and the CUDA runtime wheel for Holoscan."""
    env = dict(os.environ)
    env.update({name: str(cores) for name in _THREAD_VARIABLES})
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    # holoscan-cu13 loads libcudart.so.13, which the nvidia-cuda-runtime wheel ships.
    cudart = Path(sysconfig.get_paths()["purelib"]) / "nvidia" / "cu13" / "lib"
    if cudart.is_dir() and str(cudart) not in env.get("LD_LIBRARY_PATH", ""):
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(cudart), env.get("LD_LIBRARY_PATH", "")) if p)
    return env


def _raise_stack_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
    wanted = _STACK_BYTES if hard == resource.RLIM_INFINITY else min(_STACK_BYTES, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_STACK, (wanted, hard))


def run_child(spec: dict[str, Any], work: Path, *, timeout_s: float = 4 * 3600) -> dict[str, Any]:
    """Run one measurement described by ``spec`` in a new process; returns its result.

    ``work`` receives ``<name>.spec.json``, ``<name>.json`` (the result) and ``<name>.log``, with
    ``name`` = ``spec["name"]``.
    """
    work.mkdir(parents=True, exist_ok=True)
    name = spec["name"]
    spec = {**spec, "result": str(work / f"{name}.json")}
    spec_path = work / f"{name}.spec.json"
    spec_path.write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")
    log_path = work / f"{name}.log"
    Path(spec["result"]).unlink(missing_ok=True)
    repo_root = Path(__file__).resolve().parents[1]
    with log_path.open("w", encoding="utf-8") as log:
        status = subprocess.run([sys.executable, "-m", "benchmarks.child", str(spec_path)], cwd=repo_root,
                                env=child_environment(int(spec["cores"])), stdout=log, stderr=subprocess.STDOUT,
                                preexec_fn=_raise_stack_limit, timeout=timeout_s, check=False).returncode
    if status != 0 or not Path(spec["result"]).is_file():
        tail = "\n".join(log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-25:])
        raise ChildFailed(f"benchmark step {name} failed (exit status {status}); log {log_path}:\n{tail}")
    return json.loads(Path(spec["result"]).read_text(encoding="utf-8"))


def _pin(cores: int) -> list[int]:
    """Keep this process on its first ``cores`` allowed CPUs; returns them."""
    allowed = sorted(os.sched_getaffinity(0))
    chosen = allowed[: max(1, cores)]
    os.sched_setaffinity(0, chosen)
    return chosen


def _preimport(kind: str) -> None:
    """Import what the measured code needs, so that no import is timed."""
    import highdicom  # noqa: F401
    import pydicom  # noqa: F401

    import operators.dicom_scan  # noqa: F401
    import operators.series_selection  # noqa: F401
    import operators.series_volume  # noqa: F401

    if kind in ("ours", "settings"):
        import operators.femur_splitter  # noqa: F401
        import operators.lesion_segmentation  # noqa: F401
        import operators.study_outputs  # noqa: F401
    if kind in ("ours", "stock", "settings"):
        import torch
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor  # noqa: F401
        # Loading a model looks its trainer class up among nnU-Net's trainer modules, importing them (seconds).
        import nnunetv2.training.nnUNetTrainer.nnUNetTrainer  # noqa: F401

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if kind == "stock":
        import monai.deploy.operators  # noqa: F401
    if kind == "references":
        import SimpleITK  # noqa: F401


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(args[0]).read_text(encoding="utf-8"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    cpus = _pin(int(spec["cores"]))
    kind = spec["kind"]
    _preimport(kind)
    # The imports leave hundreds of thousands of objects that no full collection has examined yet; the
    # first full collection then costs about a second and lands in whichever stage comes first (it
    # tripled the scan of a small study). Collect now, before the clock starts, for every path alike.
    gc.collect()

    from benchmarks.memory import StageRecorder, process_peak_rss_mib
    from benchmarks.model import ModelSettings

    model = ModelSettings.from_dict(spec["model"]) if spec.get("model") else None
    recorder = StageRecorder()
    if kind == "ours":
        from benchmarks.our_path import run_our_path

        result = run_our_path(Path(spec["dicom_dir"]), Path(spec["out_dir"]), model, recorder)
    elif kind == "stock":
        from benchmarks.stock_path import run_stock_path

        result = run_stock_path(Path(spec["dicom_dir"]), Path(spec["out_dir"]), model, recorder)
    elif kind == "references":
        from benchmarks.references import run_references

        result = run_references(Path(spec["dicom_dir"]), recorder)
    elif kind == "settings":
        from benchmarks.settings_table import run_settings_table

        assert model is not None, "the settings table needs a model"
        result = run_settings_table(spec["table"], model, recorder)
    else:
        raise ValueError(f"unknown benchmark kind {kind!r}")
    end_to_end = recorder.elapsed
    output = {
        "kind": kind,
        "cpus": cpus,
        "stages": [r.to_dict() for r in recorder.records],
        "end_to_end_s": end_to_end,
        "peak_rss_mib": process_peak_rss_mib(recorder.records),
        "memory_method": recorder.method,
        "result": result,
    }
    tmp = Path(spec["result"] + ".partial")
    tmp.write_text(json.dumps(output, indent=2) + "\n", encoding="utf-8")
    tmp.replace(spec["result"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
