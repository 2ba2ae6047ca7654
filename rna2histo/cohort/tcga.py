"""The real cohort: TCGA RNA-seq from UCSC Xena and diagnostic H&E slides from the GDC.

``build_tcga`` runs four steps, each resumable:

1. RNA: the Xena matrix (log2(RSEM + 1), genes x samples) is downloaded into the cache once;
   primary-tumour samples (type 01) give one profile per patient (`xena`).
2. Slides: the GDC files API lists the project's open diagnostic SVS slides; patients that also
   have RNA keep one slide each, and a seeded draw keeps up to `max_patients` (`gdc`).
3. Per slide, in `workers` processes: download (HTTP Range resume, md5 check, retries), tile
   with OpenSlide (`slides.tile_slide`), save the tiles and a record in the cache, and delete
   the slide unless `keep_slides`. A slide already recorded is not touched again, so a run
   killed at any point redoes only unfinished slides. A slide OpenSlide cannot open is recorded
   as unreadable and skipped; a download that fails after its retries is left unrecorded (the
   next run tries again) and listed in the manifest's report.
4. The cohort is assembled from the records in patient order and committed atomically: the
   same records always give the same cohort, interrupted or not.

Cache layout: ``xena/`` the matrix, ``slides/`` downloads (and ``.part`` files), ``tiles/<file_id>.npy``
and ``records/<file_id>.json`` per slide. Nothing is written outside `out` and `cache`.
"""

from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm  # plain: tqdm.auto warns in a notebook without ipywidgets

from ..errors import UserError
from ..paths import atomic_write, resolve
from . import gdc, xena
from .folder import TILE_COLUMNS
from .format import CohortWriter, check_output
from .http import safe_name
from .rna_table import clean_rna, counted, nfc
from .split import split_patients

TARGET_MPP = 0.5  # tiles are cut at 20x


def build_tcga(
    out,
    project: str = "TCGA-LUAD",
    max_patients: int | None = None,
    tiles_per_patient: int = 64,
    tile_size: int = 256,
    image_size: int = 128,
    workers: int = 2,
    keep_slides: bool = True,
    cache=None,
    xena_url: str | None = None,
    gdc_api: str = gdc.GDC_API,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Build (or finish building) the TCGA cohort at `out`; returns `out`. See the module docstring."""
    out = resolve(out)
    cache = resolve(cache) if cache else out.with_name(f"{out.name}-cache")
    xena_url = xena_url or xena.matrix_url(project)  # the project's matrix on the public hub
    _check_params(max_patients, tiles_per_patient, tile_size, image_size, workers)
    check_output(out)
    rna, rna_report = _rna(xena_url, cache)
    slides = gdc.select_slides(gdc.diagnostic_slides(project, api=gdc_api), rna.index, max_patients, seed)
    if slides.empty:
        raise UserError(f"{gdc_api}: no open diagnostic slide of {project} belongs to a patient with RNA")
    job = {"cache": str(cache), "api": gdc_api, "tile_size": tile_size, "image_size": image_size,
           "tiles_per_patient": tiles_per_patient, "seed": seed, "keep_slides": keep_slides}
    failed = _process_slides(slides, job, workers, progress)
    return _assemble(out, cache, slides, rna, job, failed, {
        "project": project, "max_patients": max_patients, "workers": workers,
        "xena_url": xena_url, "gdc_api": gdc_api, "rna": rna_report})


def _check_params(max_patients, tiles_per_patient, tile_size, image_size, workers) -> None:
    for name, value in (("tiles_per_patient", tiles_per_patient), ("tile_size", tile_size),
                        ("image_size", image_size), ("workers", workers)):
        if int(value) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1 (got {value})")
    if max_patients is not None and int(max_patients) < 1:
        raise UserError(f"--max-patients must be at least 1 (got {max_patients})")


def _rna(url: str, cache: Path) -> tuple[pd.DataFrame, dict]:
    """Patients x genes of the primary tumours, cleaned as every source cleans its RNA."""
    matrix = xena.read_matrix(xena.fetch_matrix(url, cache / "xena"))
    profiles, report = xena.primary_tumour_profiles(matrix)
    table, cleaning = clean_rna(profiles)
    return table, {**report, **cleaning}


# --- per slide: download, tile, record ------------------------------------------------------


def _paths(cache: Path, file_id: str) -> tuple[Path, Path]:
    """(tiles .npy, record .json) of one slide; file ids are GDC UUIDs, made safe anyway."""
    name = safe_name(file_id)
    return cache / "tiles" / f"{name}.npy", cache / "records" / f"{name}.json"


def read_record(cache: Path, file_id: str) -> dict | None:
    """The record of a finished slide, or None when it still has to be done."""
    tiles, record = _paths(cache, file_id)
    if not record.exists():
        return None
    done = json.loads(record.read_text())
    if done.get("status") == "tiled" and not tiles.exists():
        return None  # the tiles were lost: redo the slide
    if "patient_id" in done:  # NFC like the RNA it joins; a cache from older code may differ
        done["patient_id"] = nfc(done["patient_id"])
    return done


def process_slide(row: dict, job: dict) -> dict:
    """Download, tile and record one slide (in a worker process); returns its record.

    The tiles are saved before the record, and both atomically: a record always has its tiles.
    """
    from .slides import SlideError, tile_slide

    cache = Path(job["cache"])
    tiles_path, record_path = _paths(cache, row["file_id"])
    slide = gdc.download_slide(row, cache, api=job["api"])
    try:
        tiles, facts = tile_slide(slide, tile_size=job["tile_size"], image_size=job["image_size"],
                                  tiles_per_patient=job["tiles_per_patient"], seed=job["seed"])
        positions = facts.pop("tiles")  # x, y (level-0 px) and tissue fraction of each tile
        record = {"status": "tiled", "tiles": int(len(tiles)), "positions": positions, **facts}
        atomic_write(tiles_path, lambda tmp: np.save(tmp.open("wb"), tiles))
    except SlideError as err:
        record = {"status": "unreadable", "reason": str(err)}
    record.update(file_id=row["file_id"], file_name=row["file_name"], patient_id=row["patient_id"])
    atomic_write(record_path, lambda tmp: tmp.write_text(json.dumps(record, indent=1, default=str)))
    if not job["keep_slides"]:
        slide.unlink(missing_ok=True)  # disk stays near one slide per worker
    return record


def _process_slides(slides: pd.DataFrame, job: dict, workers: int, progress: bool) -> dict:
    """Every slide without a record, in `workers` processes; {file name: why} for the failures."""
    todo = [row for row in slides.to_dict("records") if read_record(Path(job["cache"]), row["file_id"]) is None]
    failed = {}
    bar = tqdm(total=len(todo), desc="slides", unit="slide", disable=not progress or not todo)
    if workers == 1:  # in this process: simpler to debug, and what the tests exercise first
        for row in todo:
            _settle(lambda row=row: process_slide(row, job), row, failed)
            bar.update()
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(process_slide, row, job): row for row in todo}
            for future in as_completed(futures):
                _settle(future.result, futures[future], failed)
                bar.update()
    bar.close()
    return failed


def _settle(outcome, row: dict, failed: dict) -> None:
    """Call `outcome` (a slide's processing, or its future's result); a download that failed
    after its retries is noted in `failed` and left unrecorded, so the next run tries again."""
    try:
        outcome()
    except UserError as err:
        failed[row["file_name"]] = str(err)


# --- the cohort from the records ------------------------------------------------------------


def _assemble(out: Path, cache: Path, slides: pd.DataFrame, rna: pd.DataFrame, job: dict,
              failed: dict, params: dict) -> Path:
    """Write the cohort from the recorded slides, patients in sorted order."""
    records = {r["file_id"]: read_record(cache, r["file_id"]) for r in slides.to_dict("records")}
    tiled = [r for r in records.values() if r and r["status"] == "tiled" and r["tiles"] > 0]
    unreadable = {r["file_name"]: r["reason"] for r in records.values() if r and r["status"] == "unreadable"}
    if not tiled:
        raise UserError(f"{cache}: no slide gave tiles ({len(unreadable)} unreadable, {len(failed)} failed)")
    tiled.sort(key=lambda r: r["patient_id"])
    report = {
        "slides_selected": len(slides),
        "slides_bytes": int(slides["file_size"].sum()),  # what the downloads cost, per the GDC
        "slides_tiled": len(tiled),
        "slides_unreadable": counted(unreadable),
        "slides_failed": counted(failed),
        "slides_without_tiles": counted([r["file_name"] for r in records.values()
                                         if r and r["status"] == "tiled" and r["tiles"] == 0]),
        "rna": params.pop("rna"),
    }
    with CohortWriter(out, job["image_size"]) as writer:
        rows = []
        for record in tiled:
            tiles = np.load(_paths(cache, record["file_id"])[0])
            writer.add_tiles(tiles)
            where = pd.DataFrame(record["positions"])  # x, y, tissue_fraction per tile
            rows.append(where.assign(patient_id=record["patient_id"], origin=record["file_name"]))
        patients = [r["patient_id"] for r in tiled]
        return writer.commit(
            source="tcga",
            params={**params, **{k: v for k, v in job.items() if k != "cache"}, "cache": job["cache"]},
            rna=rna.loc[patients],
            tiles_table=pd.concat(rows, ignore_index=True)[TILE_COLUMNS],
            splits=split_patients(patients, job["seed"]),
            mpp=TARGET_MPP * job["tile_size"] / job["image_size"],
            report=report,
        )
