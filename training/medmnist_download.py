"""Published MedMNIST v2 / MedMNIST+ 2D files (Zenodo record 10519652) and a checked download.

URLs, MD5s and class names are copied from the ``medmnist`` package's ``info.py`` (MedMNIST+
release); 28 px files have no size suffix, larger ones ``_64``, ``_128`` and ``_224``.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from training.dataset_types import DatasetError

RECORD_URL = "https://zenodo.org/records/10519652/files"
SIZES = (28, 64, 128, 224)
DOWNLOAD_TIMEOUT_S = 30.0
_ORGANS = ("bladder", "femur-left", "femur-right", "heart", "kidney-left", "kidney-right", "liver",
           "lung-left", "lung-right", "pancreas", "spleen")


@dataclass(frozen=True)
class MedMnistInfo:
    """One 2D MedMNIST dataset: class names, whether multi-label, and MD5 per image size."""

    name: str
    class_names: tuple[str, ...]
    md5: dict[int, str]
    multi_label: bool = False

    def file_name(self, size: int) -> str:
        return f"{self.name}.npz" if size == 28 else f"{self.name}_{size}.npz"

    def url(self, size: int) -> str:
        return f"{RECORD_URL}/{self.file_name(size)}?download=1"


def _info(name, classes, md5s, multi_label=False) -> MedMnistInfo:
    return MedMnistInfo(name, tuple(classes), dict(zip(SIZES, md5s)), multi_label)


INFO: dict[str, MedMnistInfo] = {info.name: info for info in (
    _info("pathmnist", ("adipose", "background", "debris", "lymphocytes", "mucus", "smooth muscle",
                        "normal colon mucosa", "cancer-associated stroma",
                        "colorectal adenocarcinoma epithelium"),
          ("a8b06965200029087d5bd730944a56c1", "55aa9c1e0525abe5a6b9d8343a507616",
           "ac42d08fb904d92c244187169d1fd1d9", "2c51a510bcdc9cf8ddb2af93af1eadec")),
    _info("chestmnist", ("atelectasis", "cardiomegaly", "effusion", "infiltration", "mass", "nodule",
                         "pneumonia", "pneumothorax", "consolidation", "edema", "emphysema",
                         "fibrosis", "pleural", "hernia"),
          ("02c8a6516a18b556561a56cbdd36c4a8", "9de6cd0b934ebb5b7426cfba5efbae16",
           "db107e5590b27930b62dbaf558aebee3", "45bd33e6f06c3e8cdb481c74a89152aa"), multi_label=True),
    _info("dermamnist", ("actinic keratoses and intraepithelial carcinoma", "basal cell carcinoma",
                         "benign keratosis-like lesions", "dermatofibroma", "melanoma",
                         "melanocytic nevi", "vascular lesions"),
          ("0744692d530f8e62ec473284d019b0c7", "b70a2f5635c6199aeaa28c31d7202e1f",
           "2defd784463fa5243564e855ed717de1", "8974907d8e169bef5f5b96bc506ae45d")),
    _info("octmnist", ("choroidal neovascularization", "diabetic macular edema", "drusen", "normal"),
          ("c68d92d5b585d8d81f7112f81e2d0842", "e229e9440236b774d9f0dfef9d07bdaf",
           "0a97e76651ace45c5d943ee3f65b63ae", "abc493b6d529d5de7569faaef2773ba3")),
    _info("pneumoniamnist", ("normal", "pneumonia"),
          ("28209eda62fecd6e6a2d98b1501bb15f", "8f4eceb4ccffa70c672198ea285246c6",
           "05b46931834c231683c68f40c47b2971", "d6a3c71de1b945ea11211b03746c1fe1")),
    _info("retinamnist", ("0", "1", "2", "3", "4"),
          ("bd4c0672f1bba3e3a89f0e4e876791e4", "afda852cc34dcda56f86ad2b2457dbcc",
           "e48e916a24454daf90583d4e6efb1a18", "eae7e3b6f3fcbda4ae613ebdcbe35348")),
    _info("breastmnist", ("malignant", "normal, benign"),
          ("750601b1f35ba3300ea97c75c52ff8f6", "742edef2a1fd1524b2efff4bd7ba9364",
           "363e4b3f8d712e9b5de15470a2aaadf1", "b56378a6eefa9fed602bb16d192d4c8b")),
    _info("bloodmnist", ("basophil", "eosinophil", "erythroblast",
                         "immature granulocytes(myelocytes, metamyelocytes and promyelocytes)",
                         "lymphocyte", "monocyte", "neutrophil", "platelet"),
          ("7053d0359d879ad8a5505303e11de1dc", "2b94928a2ae4916078ca51e05b6b800b",
           "adace1e0ed228fccda1f39692059dd4c", "b718ff6835fcbdb22ba9eacccd7b2601")),
    _info("tissuemnist", ("Collecting Duct, Connecting Tubule", "Distal Convoluted Tubule",
                          "Glomerular endothelial cells", "Interstitial endothelial cells",
                          "Leukocytes", "Podocytes", "Proximal Tubule Segments",
                          "Thick Ascending Limb"),
          ("ebe78ee8b05294063de985d821c1c34b", "123ece2eba09d0aa5d698fda57103344",
           "61b955355d7425a89687b06cca3ce0c2", "b077128c4a949f0a4eb01517f9037b9c")),
    _info("organamnist", _ORGANS,
          ("68e3f8846a6bd62f0c9bf841c0d9eacc", "2dcccc29b88e6da5a01161ef20cda288",
           "eeae80d0a227a8d099027e1b3cfd3b60", "50747347e05c87dd3aaf92c49f9f3170")),
    _info("organcmnist", _ORGANS,
          ("b9ceb9546e10131b32923c5bbeaea2b1", "3ce34a8724ea6f548e6db4744d03b6a9",
           "773c1f009daa3fe5d9a2a201b2a7ed94", "050f5e875dc056f6768abf94ec9995d1")),
    _info("organsmnist", _ORGANS,
          ("9ab87b696fb54e2a387ebe992d6ed5f1", "53a6d115339d874c25e309a994ff46d3",
           "ded0c5fa01a95dc4978b956f613e9b8e", "b354719e553fbbb2513d5533f52a4cb1")),
)}


def default_cache_dir() -> Path:
    """``$MEDROBUST_CACHE_DIR`` or ``~/.cache/medrobust/medmnist`` (read where a download happens)."""
    from training.contract.config import DataConfig, read_config

    return read_config(DataConfig).cache_dir


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(info: MedMnistInfo, size: int, cache_dir: str | os.PathLike | None = None,
          *, url: str | None = None, timeout: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """The cached, MD5-checked ``.npz`` for ``info`` at ``size``, downloading it if needed."""
    if size not in info.md5:
        raise DatasetError(f"expected a MedMNIST size in {SIZES} for {info.name}, got {size}")
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = folder / info.file_name(size)
    expected = info.md5[size]
    verified = target.with_name(target.name + ".md5")
    if target.is_file():
        # Hashing a 1 GB file each run is slow; remember a verified hash beside the file.
        if verified.is_file() and verified.read_text().strip() == expected:
            return target
        if _md5(target) == expected:
            verified.write_text(expected + "\n")
            return target
    source = url or info.url(size)
    folder.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=folder, prefix=target.name + ".", suffix=".part")
    digest = hashlib.md5()
    try:
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(source, timeout=timeout) as response:
            for block in iter(lambda: response.read(1 << 20), b""):
                digest.update(block)
                out.write(block)
    except (TimeoutError, urllib.error.URLError, OSError, ValueError) as exc:
        os.unlink(partial)
        reason = getattr(exc, "reason", exc)
        raise DatasetError(
            f"expected to download {info.file_name(size)} from {source} into {folder}, but the "
            f"download could not be made ({reason}); without network access, pass a local copy "
            f"as medmnist:FILE.npz instead"
        ) from None
    if digest.hexdigest() != expected:
        os.unlink(partial)
        raise DatasetError(
            f"{source}: expected MD5 {expected}, got {digest.hexdigest()}; the download was discarded"
        )
    os.replace(partial, target)
    verified.write_text(expected + "\n")
    return target
