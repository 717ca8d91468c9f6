"""Looking at the results in a real viewer: the OHIF viewer (npm ``@ohif/app``, its prebuilt static
``dist/``) served together with a read-only DICOMweb proxy to Orthanc.

* :mod:`viewer.ohif`: where the installed OHIF viewer is and the ``app-config.js`` we give it.
* :mod:`viewer.server`: the HTTP server (viewer files, SPA fallback, ``/dicom-web`` proxy with the PACS
  credentials added, so that the browser needs none and sees a single origin).
* ``python -m viewer``: a local Orthanc with the demo study and its SEG and SR, and the viewer on it
  (``make viewer``).
"""
