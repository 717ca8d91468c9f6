"""Performance benchmark of the application against the stock MONAI Deploy path.

``python -m benchmarks`` (``make bench``) generates standard synthetic studies, runs on each of them, every
path in a fresh process pinned to a fixed number of CPU cores:

* **ours** (:mod:`benchmarks.our_path`): the application's plain-Python stages (scan, select, decode,
  split, lesion inference per femur crop, SEG, SR, report);
* **stock** (:mod:`benchmarks.stock_path`): the MONAI Deploy App SDK's ``DICOMDataLoaderOperator``,
  ``DICOMSeriesSelectorOperator`` and ``DICOMSeriesToVolumeOperator``, the same nnU-Net model on the
  whole CT volume and ``DICOMSegmentationWriterOperator``;
* **references** (:mod:`benchmarks.references`): SimpleITK's and highdicom's series readers on the
  chosen series alone;

then writes a Markdown and a JSON report (:mod:`benchmarks.report`) with wall time and peak memory per
stage, end to end, the ratios the project targets, the growth with the number of slices and a
speed/accuracy table of inference settings (:mod:`benchmarks.settings_table`).
"""
