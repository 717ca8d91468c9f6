"""``python -m map_packaging`` (``make map``): check and stage everything the MAP needs, then package it.

Steps, each stopping with one line on standard error when it finds a problem:

1. ``app.yaml``: title, version (equal to pyproject.toml's), hyphenated formats, resources
   (:mod:`map_packaging.app_config`);
2. the model: ``model/`` must hold one nnU-Net lesion model with weights (:mod:`map_packaging.model_folder`);
3. the image's requirements: the runtime closure pinned as in ``constraints.txt``
   (:mod:`map_packaging.runtime_requirements`);
4. staging: ``<out>/app-src/`` (the application folder), ``<out>/models/<name>/`` and ``<out>/docs/``
   (the model card, ``README.md`` beside the model, for ``/opt/holoscan/docs``);
5. packaging with ``monai-deploy package`` (holoscan-cli 4.2.0): with a docker engine, the image
   ``femur-lesion-seg:<version>``; without one, the packager's Dockerfile, app.json and pkg.json in
   ``<out>/package/`` (:mod:`map_packaging.packager`).

Exit status: 0 image built; 2 a problem with the inputs (nothing packaged); 3 everything checked and
the packager's files written, but no image because no docker engine is available; 1 the packager failed.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path

from map_packaging.app_config import AppConfigError, read_app_config
from map_packaging.model_folder import ModelError, find_model, stage_models
from map_packaging.packager import (
    ARTIFACTS,
    PackageRequest,
    PackagingError,
    capture_build_context,
    docker_engine_problem,
    package_with_docker,
)
from map_packaging.runtime_requirements import RequirementsError, pinned_runtime_requirements
from map_packaging.staging import find_model_card, stage_app_folder, stage_docs

logger = logging.getLogger("map_packaging")

EXIT_BUILT = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_NO_DOCKER = 3
IMAGE_NAME = "femur-lesion-seg"
REPO_ROOT = Path(__file__).resolve().parents[1]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the steps above; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m map_packaging", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=REPO_ROOT / "app.yaml",
                        help="application configuration (default: app.yaml)")
    parser.add_argument("--model", type=Path, default=REPO_ROOT / "model",
                        help="the lesion model folder, or a folder holding exactly one (default: model/)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "build" / "map",
                        help="build folder (default: build/map)")
    parser.add_argument("--tag", help=f"image tag (default: {IMAGE_NAME}:<version>)")
    parser.add_argument("--source", type=Path, default=ARTIFACTS,
                        help="holoscan-cli artifacts manifest (default: the copy shipped in map_packaging/)")
    parser.add_argument("--no-docker", action="store_true",
                        help="do not build the image even where a docker engine runs; write the packager's files only")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stdout)

    try:
        version = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
        config = read_app_config(args.config, expected_version=version)
        model = find_model(args.model)
        requirements = pinned_runtime_requirements(REPO_ROOT / "requirements.txt", REPO_ROOT / "constraints.txt")
        if not args.source.is_file():
            raise FileNotFoundError(f"holoscan-cli artifacts manifest not found: {args.source}")
    except (AppConfigError, ModelError, RequirementsError, FileNotFoundError) as error:
        return _fail(EXIT_BAD_INPUT, str(error))

    out = args.out.resolve()
    logger.info("packaging %s %s with model %s into %s", IMAGE_NAME, version, model, out)
    app_folder = stage_app_folder(REPO_ROOT, out / "app-src", version=version, requirements=requirements)
    models = stage_models(model, out / "models")
    card = find_model_card(args.model, model)
    if card is None:
        logger.warning("no model card (README.md) beside %s: the image carries no documentation", model)
    docs = stage_docs(card, out / "docs") if card is not None else None
    request = PackageRequest(app_folder=app_folder, config=args.config.resolve(), models=models, docs=docs,
                             tag=args.tag or f"{IMAGE_NAME}:{config.version}", build_cache=out / "build-cache",
                             source=args.source.resolve())

    try:
        # Always: the packager's own checks and its Dockerfile/manifests, for inspection, before any build.
        captured = capture_build_context(request, out / "package")
        print(f"MAP inputs checked and staged; the packager's Dockerfile, app.json and pkg.json are in "
              f"{captured.folder}")
        problem = "--no-docker given" if args.no_docker else docker_engine_problem()
        if problem is not None:
            return _fail(EXIT_NO_DOCKER, f"image {request.tag} not built: no docker engine is available here "
                                         f"({problem})")
        package_with_docker(request, captured.image_tag)
    except PackagingError as error:
        return _fail(EXIT_FAILED, str(error))
    print(f"built {request.tag} (also tagged {captured.image_tag}); run it with "
          f"`monai-deploy run {request.tag} -i DICOM_FOLDER -o OUTPUT_FOLDER`")
    return EXIT_BUILT


def _fail(status: int, message: str) -> int:
    sys.stdout.flush()
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    return status
