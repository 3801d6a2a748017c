"""A run directory: everything one ``sigsim run`` wrote, enough to redo plots and report.

Its path is the one ``sigsim run --out DIR`` names (a new or empty folder), else a new
``runs/<UTC timestamp>-<config name>/`` (``--runs-dir`` names the parent). Layout:

* ``config.toml``: the sweep config as given (copied byte for byte);
* ``run.json``: metadata (command, start time, hardware profile, wall time per phase);
* ``results.jsonl``: the profiler's records, one per data point;
* ``validation.json``: model vs measurement, one entry per point and quantity;
* ``report.md`` and the plots (``*.png``, ``*.svg``) beside it.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from experiments import config as sweep_config

CONFIG = "config.toml"
META = "run.json"
RESULTS = "results.jsonl"
VALIDATION = "validation.json"


@dataclass(frozen=True, slots=True)
class RunDir:
    path: Path

    @property
    def results(self) -> Path:
        return self.path / RESULTS

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG

    def config(self) -> sweep_config.SweepConfig:
        return sweep_config.load(self.config_path, name=self.meta().get("name"))

    def meta(self) -> dict:
        meta_path = self.path / META
        return json.loads(meta_path.read_text()) if meta_path.is_file() else {}

    def update_meta(self, **values) -> dict:
        meta = self.meta()
        meta.update(values)
        (self.path / META).write_text(json.dumps(meta, indent=2) + "\n")
        return meta

    def record_phase(self, phase: str, seconds: float) -> None:
        phases = self.meta().get("phases_s", {})
        phases[phase] = round(seconds, 2)
        self.update_meta(phases_s=phases)


def create(
    config_file: Path, name: str, root: Path = Path("runs"), out: Path | None = None
) -> RunDir:
    """A fresh run directory holding a copy of the config file: ``out`` exactly (a new or
    empty folder; a non-empty one is refused, since ``--resume`` is how to continue it),
    else a new ``root/<UTC timestamp>-<name>/``."""
    if out is not None:
        path = Path(out)
        if path.exists() and not path.is_dir():
            raise ValueError(f"--out {str(path)!r} is a file; a run directory is a folder")
        if path.is_dir() and any(path.iterdir()):
            raise ValueError(
                f"--out {str(path)!r} is not empty; to continue the run there use "
                f"--resume {path}, else name a new folder"
            )
        path.mkdir(parents=True, exist_ok=True)
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        path = root / f"{stamp}-{name}"
        suffix = 1
        while path.exists():
            suffix += 1
            path = root / f"{stamp}-{name}-{suffix}"
        path.mkdir(parents=True)
    shutil.copyfile(config_file, path / CONFIG)
    run = RunDir(path)
    run.update_meta(name=name, started_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    return run


def open_existing(path: str | Path) -> RunDir:
    """A run directory given on the command line; refuses one without results, and a
    results file (only ``sigsim validate`` reads those) with a line saying what is needed."""
    run = RunDir(Path(path))
    if run.path.is_file():
        raise ValueError(
            f"{str(path)!r} is a file; this verb reads a run directory (written by "
            "`sigsim run`); `sigsim validate` also reads results .jsonl files"
        )
    if not run.path.is_dir():
        raise FileNotFoundError(f"run directory {str(path)!r} does not exist")
    if not run.config_path.is_file():
        raise FileNotFoundError(f"{path}: no {CONFIG}; is this a `sigsim run` directory?")
    if not run.results.is_file():
        raise FileNotFoundError(f"{path}: no {RESULTS}; the run measured nothing yet")
    return run
