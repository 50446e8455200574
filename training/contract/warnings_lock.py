"""The one lock held while a decoder changes the process-wide warning filters.

``warnings.catch_warnings`` saves and restores one list shared by every thread: two threads inside
it at once can restore each other's filters and leave one of them in force for good. PIL's header
read (:mod:`training.contract.imaging`) and pydicom's parse (:mod:`training.contract.dicom`) both
change the filters, so both hold this lock, not one each.
"""

from __future__ import annotations

import threading

WARNINGS_LOCK = threading.Lock()
