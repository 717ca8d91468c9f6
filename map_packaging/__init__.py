"""Building the MONAI Application Package (MAP) of the application: ``make map``, i.e.
``python -m map_packaging`` (see :mod:`map_packaging.cli`).

Build-time only: nothing here is part of the application or goes into the image. The package is named
``map_packaging`` so that it cannot shadow the PyPI package ``packaging`` that pip and holoscan-cli import.

``holoscan-cli-4.2.0-artifacts.json`` is a copy of ``releases/4.2.0/artifacts.json`` of NVIDIA's
holoscan-cli (Copyright NVIDIA CORPORATION & AFFILIATES, Apache License 2.0): the base images the packager
4.2.0 builds on, which it otherwise downloads from GitHub at every run.
"""
