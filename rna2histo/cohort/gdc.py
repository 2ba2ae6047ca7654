"""Diagnostic H&E slides from the NCI Genomic Data Commons: list them, choose, download.

The GDC API (https://docs.gdc.cancer.gov/API/Users_Guide/Search_and_Retrieval/) is queried
with a POST to ``/files`` carrying JSON ``filters``, ``fields``, ``size`` and ``from`` (an offset,
0 first); each answer holds ``data.hits`` and ``data.pagination`` (``total``, ``pages``, ...).
A file is downloaded from ``/data/<file_id>``, which honours HTTP ``Range`` (the GDC's own
transfer tool fetches segments that way), and checked against the ``md5sum`` and
``file_size`` the files endpoint reported. Open-access slides need no token.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import numpy as np
import pandas as pd
import requests

from ..errors import UserError, where
from . import http
from .rna_table import check_normalisation, patient_id

GDC_API = "https://api.gdc.cancer.gov"
FIELDS = ("file_id", "file_name", "md5sum", "file_size", "cases.submitter_id")
COLUMNS = ["file_id", "file_name", "md5sum", "file_size", "patient_id"]


def slide_filters(project: str) -> dict:
    """The GDC filter for a project's open-access diagnostic slides in SVS."""
    terms = {
        "cases.project.project_id": project,
        "files.data_type": "Slide Image",
        "files.experimental_strategy": "Diagnostic Slide",
        "files.data_format": "SVS",
        "files.access": "open",
    }
    return {
        "op": "and",
        "content": [{"op": "in", "content": {"field": f, "value": [v]}} for f, v in terms.items()],
    }


def diagnostic_slides(project: str, api: str = GDC_API, session=None, page_size: int = 500,
                      **retry) -> pd.DataFrame:
    """One row per slide: file_id, file_name, md5sum, file_size, patient_id (12 characters).

    Pages through ``/files`` with ``from``/``size`` until ``pagination.total`` rows are in.
    """
    own = session is None
    session = session or requests.Session()
    try:
        hits = _all_hits(session, f"{api.rstrip('/')}/files", slide_filters(project),
                         page_size, retry)
    finally:
        if own:
            session.close()
    rows = [_row(hit, api) for hit in hits]
    # patient_id() normalises (NFC); two spellings of one case must not merge unseen
    check_normalisation(sorted({str(h["cases"][0]["submitter_id"]).strip() for h in hits}),
                        f"{api.rstrip('/')}/files")
    slides = pd.DataFrame(rows, columns=COLUMNS).drop_duplicates("file_id")
    slides["file_size"] = slides["file_size"].astype("int64")
    return slides.sort_values(["patient_id", "file_name"], ignore_index=True)


def select_slides(slides: pd.DataFrame, patients_with_rna, max_patients: int | None = None,
                  seed: int = 0) -> pd.DataFrame:
    """One slide per patient that also has RNA; a seeded subset of `max_patients` if given.

    The slide kept is the patient's first by file name: deterministic, and TCGA names
    (``TCGA-05-4244-01Z-00-DX1.<uuid>.svs``) then put the primary tumour (sample type 01)
    before other samples and the first diagnostic slide (DX1) before DX2. The subset is
    ``numpy.random.default_rng(seed)`` choosing among the patients in sorted order, so the
    same seed and inputs give the same patients. Rows come sorted by patient_id.
    """
    keep = slides["patient_id"].isin(set(map(str, patients_with_rna)))
    chosen = slides.loc[keep].sort_values(["patient_id", "file_name"])
    chosen = chosen.drop_duplicates("patient_id")
    if max_patients is not None and max_patients < len(chosen):
        rng = np.random.default_rng(seed)
        picked = rng.choice(len(chosen), size=int(max_patients), replace=False)
        chosen = chosen.iloc[np.sort(picked)]
    return chosen.reset_index(drop=True)


def download_slide(row, cache: Path, api: str = GDC_API, session=None, **retry) -> Path:
    """Download one slide (a row of `diagnostic_slides`) to ``cache/slides/<safe file_name>``.

    `retry` goes to `http.download` (retries, backoff, progress, ...). Returns the path.
    """
    dest = http.inside(Path(cache) / "slides", row["file_name"])
    url = f"{api.rstrip('/')}/data/{quote(str(row['file_id']), safe='')}"
    return http.download(url, dest, md5=row["md5sum"], size=int(row["file_size"]),
                         session=session, **retry)


def _all_hits(session, url: str, filters: dict, page_size: int, retry: dict) -> list[dict]:
    """Every hit of the query, page by page; stops on the reported total or an empty page."""
    hits, offset = [], 0
    while True:
        payload = {"filters": filters, "fields": ",".join(FIELDS), "format": "JSON",
                   "size": int(page_size), "from": offset}
        data = _data(http.get_json(session, url, payload, **retry), url)
        page = data["hits"]
        hits += page
        offset += len(page)
        if not page or offset >= int(data["pagination"]["total"]):
            return hits


def _data(answer, url: str) -> dict:
    """The ``data`` part of a search answer, checked for the keys this module reads."""
    data = answer.get("data") if isinstance(answer, dict) else None
    if not isinstance(data, dict) or not isinstance(data.get("hits"), list):
        raise where(url, f"unexpected answer (no data.hits): {str(answer)[:120]!r}")
    if "total" not in (data.get("pagination") or {}):
        raise where(url, "unexpected answer: no data.pagination.total")
    return data


def _row(hit: dict, api: str) -> dict:
    """A table row from one hit; a slide belongs to exactly one case."""
    missing = [f for f in ("file_id", "file_name", "md5sum", "file_size") if f not in hit]
    cases = hit.get("cases") or []
    if missing or not cases or "submitter_id" not in cases[0]:
        what = ", ".join(missing) or "cases.submitter_id"
        raise UserError(f"{api}: file {hit.get('file_id', '?')} came without {what}")
    fields = {f: hit[f] for f in ("file_id", "file_name", "md5sum", "file_size")}
    return {**fields, "patient_id": patient_id(cases[0]["submitter_id"])}

