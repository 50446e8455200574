"""The contract between training, the front end and the audit: the bottom of the import graph.

Everything the three parts must agree on lives here and nowhere else: the model repository's
layout and `models.config` (`repository`), the one image decode path (`imaging`, with `dicom` for
DICOM and the errors of both in `image_errors`), the model card
(`card`), the exported signatures with their batch and cotangent checks (`signatures`), the one
HTTP error family (`errors`) and the process configurations (`config`). These modules import
nothing else of the project, so any part can import them without pulling in another part.
"""
