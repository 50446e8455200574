"""An audit over a DICOM export named after its patients keeps no path component anywhere it writes.

PACS exports are often named after the patient (`PHIXDIR_DOE^JANE_*/PHIXFILE_Jane_Doe_*.dcm`). A
whole `medrobust audit run` over such a folder, on the tiny models, with the store, the report's
artefacts and every log line captured: none of them may hold a folder or file name of the export.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from medrobust.cli import main
from tests import dicom_files as files

pytestmark = pytest.mark.slow  # one real audit, a minute on 2 cores

NAMES = ("PHIX", "Jane", "DOE", "Doe")


def _export(root, class_names) -> None:
    """Class folders (the model card's class names, so the audit accepts the set), files named after patients."""
    for c, name in enumerate(class_names):
        for p in range(4):
            ds = files.dataset((files.grey_ramp(64, 64) + 60 * c + 7 * p).astype(np.uint8), identifiers=False)
            files.write(root / name / f"PHIXDIR_DOE^JANE_{c}{p}" / f"PHIXFILE_Jane_Doe_{c}{p}.dcm", files.encode(ds))


def test_no_path_of_a_dicom_audit_set_reaches_the_store_the_artefacts_or_a_log(tiny_repo, embedded_predictor, tmp_path, caplog, capsys):
    card = embedded_predictor.model_card(tiny_repo.baseline)
    export = tmp_path / "export"
    _export(export, card["class_names"])
    database, artefacts = tmp_path / "audits.sqlite", tmp_path / "artefacts"
    with caplog.at_level(logging.DEBUG):
        code = main(["audit", "run", "--model-repo", str(tiny_repo.path), "--dataset", f"dicom:{export}",
                     "--database-url", f"sqlite:///{database}", "--artefacts-dir", str(artefacts), "--samples", "6",
                     "--epsilons", "0", "0.05", "--steps", "2", "--models", tiny_repo.baseline, "--json", "--no-progress"])
    out, err = capsys.readouterr()
    (run,) = json.loads(out)["runs"]
    assert code == 0 and run["status"] == "succeeded", run
    assert run["audit_set"]["sample_ids"] and all(s.startswith("dicom/") for s in run["audit_set"]["sample_ids"])
    # The run records the spec the user typed (the export's own folder, named here without a patient);
    # the patients' names are in the folder and file names below it, which the audit must not keep.
    texts = {"stdout": out, "stderr": err, "log": caplog.text, "store": database.read_bytes().decode("latin1")}
    written = sorted(p for p in artefacts.rglob("*") if p.is_file())
    assert written, "expected the run's report in the artefacts folder"
    for path in written:
        texts[str(path.relative_to(artefacts))] = str(path.relative_to(artefacts))
        if path.suffix == ".npz":  # compressed: what it holds, not its bytes
            with np.load(path) as arrays:
                texts[path.name] = " ".join(str(arrays[key].tolist()) for key in arrays.files if arrays[key].dtype.kind in "US")
        elif path.suffix in (".json", ".html", ".txt", ".md"):
            texts[path.name] = path.read_text()
    leaks = {where: [n for n in NAMES if n in text] for where, text in texts.items()}
    assert not any(leaks.values()), leaks
