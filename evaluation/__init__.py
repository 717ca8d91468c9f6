"""Evaluation of femoral lesion segmentations, per femur, as in Rachmil et al. (2024).

Metrics work on numpy arrays with axes (z, y, x) and voxel spacing (sz, sy, sx) in millimetres:

- `evaluation.overlap`: Dice with the true-negative rule (both empty -> NaN), volume error.
- `evaluation.surface_distance`: normalised surface distance at a tolerance in mm.
- `evaluation.detection`: lesion-wise detection, false positives, sensitivity by lesion size.
- `evaluation.cyst_confusion`: reference cysts predicted as lesion.

Folders of label files are compared with `evaluation.comparison`, nnU-Net cross-validation folds
with `evaluation.cross_validation`; `evaluation.tables` and `evaluation.report` write Markdown and
CSV; ``python -m evaluation`` runs it all (see `evaluation.cli`).
"""
