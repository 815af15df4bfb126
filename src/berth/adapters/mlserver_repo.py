"""A model repository for MLServer that finds a model by its folder, not by parsing every folder.

MLServer's default ``SchemalessModelRepository.find(name)`` globs the whole repository recursively and
parses every ``model-settings.json`` under it (a pydantic ``BaseSettings`` that also reads the environment)
for each load call, so N loads into a repository of N models cost O(N²): ~3 s of CPU per lookup with
1,000 models.  Berth's agent always places a model as ``<root>/<name>/model-settings.json`` with ``name``
rewritten to the folder's name (see :mod:`berth.adapters.settings`), so :class:`BerthModelRepository`
reads exactly that one file:

* ``find(name)`` reads ``<root>/<name>/model-settings.json``; the model is not found when the folder or
  file is missing, when the file does not parse, or when it names another model.  A model's version is
  its ``parameters.version`` as before (one folder holds one version, as Berth places them).
* ``list()`` (MLServer's ``/v2/repository/index`` and its load-at-startup) reads the settings of each
  direct sub-folder whose name does not start with a dot (Berth's staging folders are dot folders).

Files nested deeper (an artifact shipping ``sub/model-settings.json``) are never read: MLServer's default
would have found and loaded them, unchecked by Berth's settings restrictions; here they are inert data.

MLServer is told to use this class through its ``model_repository_implementation`` setting
(``berth.adapters.mlserver_repo.BerthModelRepository``) and given the models' folder as
``model_repository_implementation_args: {"folder": ...}`` (``mlserver start DIR`` overrides
``model_repository_root`` with DIR, the folder of ``settings.json``), both written by
:class:`berth.adapters.mlserver_proc.MLServerProcess`; the MLServer process must be able to import
``berth`` (true for local replicas, which run MLServer from Berth's own environment).  This module is
imported inside MLServer: it imports nothing else of Berth.

``preload`` (also an implementation argument) names runtime modules imported when MLServer builds its
repository, before it answers ready: MLServer imports a model's runtime on its first load, in its event loop,
and ``mlserver_sklearn`` (scikit-learn, SciPy) takes 2-4 s of CPU there, 10-15 s on a busy host, during which
that replica loads nothing and answers no probe (docs/loading.md).  A module that cannot be imported is logged
and skipped: the first load of a model needing it reports the error as before.
"""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Sequence
from pathlib import Path

from mlserver.errors import ModelNotFound
from mlserver.logging import logger
from mlserver.repository import DEFAULT_MODEL_SETTINGS_FILENAME, ModelRepository
from mlserver.repository.load import load_model_settings
from mlserver.settings import ModelParameters, ModelSettings
from pydantic import ValidationError

SETTINGS_FILE: str = DEFAULT_MODEL_SETTINGS_FILENAME


def _preload(module: str) -> bool:
    """Import a runtime module now (MLServer is starting, not yet ready); False, logged, when it cannot be."""
    started = time.perf_counter()
    try:
        importlib.import_module(module)
    except Exception as exc:  # a runtime missing from this environment: its models' loads will say so
        logger.warning(f"Berth: cannot preload runtime module {module!r}: {type(exc).__name__}: {exc}")
        return False
    logger.info(f"Berth: preloaded runtime module {module!r} in {time.perf_counter() - started:.1f}s")
    return True


class BerthModelRepository(ModelRepository):  # type: ignore[misc]  # MLServer ships no type hints
    """``<root>/<name>/model-settings.json`` per model; lookups cost one file read, not a scan."""

    def __init__(self, root: str, folder: str | None = None, preload: Sequence[str] = ()) -> None:
        # `mlserver start DIR` replaces model_repository_root with DIR (where settings.json is), so the
        # folder models are placed in comes as an implementation argument; without one, the root it is.
        self._root = folder or root
        self.preloaded = [name for name in preload if _preload(name)]

    def _settings_path(self, name: str) -> Path | None:
        """The settings file of model ``name``, or None when ``name`` cannot be a folder of the root."""
        if not self._root or not name or name.startswith(".") or "/" in name or "\\" in name or "\0" in name:
            return None
        return Path(os.path.abspath(self._root)) / name / SETTINGS_FILE

    async def find(self, name: str) -> list[ModelSettings]:
        path = self._settings_path(name)
        if path is None or not path.is_file():
            raise ModelNotFound(name)
        try:
            settings = load_model_settings(str(path))
        except Exception as exc:
            logger.exception(f"Failed load model settings at {path}.")
            raise ModelNotFound(name) from exc
        if settings.name != name:
            logger.warning(f"{path} names model {settings.name!r}, not {name!r}; not loading it as {name!r}")
            raise ModelNotFound(name)
        return [settings]

    async def list(self) -> list[ModelSettings]:
        found: list[ModelSettings] = []
        root = Path(os.path.abspath(self._root)) if self._root else None
        if root is not None and root.is_dir():
            for child in sorted(root.iterdir(), key=lambda p: p.name):
                path = child / SETTINGS_FILE
                if child.name.startswith(".") or not path.is_file():
                    continue
                try:
                    found.append(load_model_settings(str(path)))
                except Exception:
                    logger.exception(f"Failed load model settings at {path}.")
        if not found:
            # As MLServer's default: a model configured through the environment alone, when there is one.
            try:
                default = ModelSettings()
                default.parameters = ModelParameters()
                found.append(default)
            except ValidationError:
                logger.debug("No default model found in environment settings.")
        return found
