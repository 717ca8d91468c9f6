"""The MONAI Deploy application that segments lytic lesions of the femurs on CT (:mod:`app.app`).

Run it with ``python -m app -i DICOM_FOLDER -o OUTPUT_FOLDER -m MODEL`` (:mod:`app.cli`). Importing this
package imports nothing else, so that tools can find it without loading Holoscan.
"""
