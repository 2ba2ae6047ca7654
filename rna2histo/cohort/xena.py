"""TCGA RNA-seq from the UCSC Xena TCGA hub: fetch the matrix once, read it, a profile per patient.

The hub's ``TCGA.<COHORT>.sampleMap/HiSeqV2`` datasets are gzip TSV files, genes x samples:
the header is ``sample`` then one TCGA sample barcode per column (``TCGA-05-4244-01``), each row
a gene symbol then its log2(RSEM normalised count + 1) in every sample. The hub publishes no
checksum, so the file is only size-checked against its Content-Length; a re-run reuses it.
"""

from __future__ import annotations

import gzip
import re
import zlib
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pandas as pd

from ..errors import where
from . import http
from .rna_table import _few, _one_line, check_normalisation, counted, nfc, patient_id

XENA_HUB = "https://tcga-xena-hub.s3.us-east-1.amazonaws.com/download"


def matrix_url(project: str = "TCGA-LUAD") -> str:
    """The hub's HiSeqV2 matrix of a TCGA project: TCGA-LUAD -> .../TCGA.LUAD.sampleMap%2FHiSeqV2.gz."""
    code = project.removeprefix("TCGA-")
    return f"{XENA_HUB}/TCGA.{code}.sampleMap%2FHiSeqV2.gz"


XENA_URL = matrix_url("TCGA-LUAD")
PRIMARY_TUMOUR = "01"  # TCGA sample-type code of a primary solid tumour
# project-TSS-participant-sample type: the part of a sample barcode this module relies on
_SAMPLE = re.compile(r"^TCGA-[A-Z0-9]{2}-[A-Z0-9]{4}-(\d{2})", re.IGNORECASE)


def fetch_matrix(url: str, cache: Path, session=None, **retry) -> Path:
    """Download the matrix at `url` into `cache` (once) and return its path.

    The file is named after the dataset (``TCGA.LUAD.sampleMap_HiSeqV2.gz``), so matrices of
    several cohorts can share a cache. `retry` goes to `http.download` (retries, backoff).
    """
    dataset = unquote(urlsplit(url).path.rsplit("/", 1)[-1])  # 'TCGA.LUAD.sampleMap/HiSeqV2.gz'
    dest = http.inside(Path(cache), re.sub(r"[\\/]", "_", dataset))
    return http.download(url, dest, session=session, **retry)


def read_matrix(path) -> pd.DataFrame:
    """Samples x genes (float32) from a Xena genes x samples TSV (gzip or plain); index `sample`.

    Every way the file can fail to be such a matrix is a one-line `UserError` naming the file.
    """
    path = Path(path)
    compression = "gzip" if _is_gzip(path) else None
    try:
        names = _header(path, compression)
        table = pd.read_csv(path, sep="\t", header=None, skiprows=1, index_col=0,
                            compression=compression, low_memory=False)
    except pd.errors.EmptyDataError:
        raise where(path, "no gene rows below the header") from None
    except (OSError, EOFError, zlib.error, UnicodeDecodeError, ValueError) as err:
        # a truncated gzip raises EOFError, a corrupt one zlib.error; ParserError is a ValueError
        raise where(path, f"cannot read as a tab-separated matrix: {_one_line(err)}") from None
    if table.shape[1] != len(names):
        raise where(path, f"the header names {len(names)} samples but rows have {table.shape[1]}")
    genes = _genes(table.index, path)
    values = _numeric(table, genes, names, path)  # (genes, samples)
    return pd.DataFrame(values.T, index=pd.Index(names, name="sample"), columns=genes)


def primary_tumour_profiles(matrix: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Patients x genes from samples x genes: primary-tumour samples only, one per patient.

    A patient with several primary-tumour samples (vials ``01A``, ``01B``) keeps the first in
    sorted barcode order (vial A, the usual choice in TCGA analyses) rather than an average:
    a mean of log values is a profile no sample had, and one real sample stays traceable.
    (HiSeqV2 barcodes stop at the sample, ``TCGA-05-4244-01``, so this is rare.) The report
    counts what was left out, for the cohort manifest.
    """
    codes = pd.Series([sample_type(s) for s in matrix.index], index=matrix.index)
    primary = matrix.loc[(codes == PRIMARY_TUMOUR).to_numpy()].sort_index()
    patients = pd.Index([patient_id(s) for s in primary.index], name="patient_id")
    first = ~patients.duplicated()
    profiles = primary.loc[first].set_axis(patients[first], axis=0).sort_index()
    other = codes[codes != PRIMARY_TUMOUR].value_counts().sort_index()
    report = {
        "samples": int(len(matrix)),
        "primary_tumour_samples": int(len(primary)),
        "patients": int(len(profiles)),
        "other_sample_types": counted({str(k): int(v) for k, v in other.items()}),
        "extra_primary_samples_dropped": counted(primary.index[~first]),
    }
    return profiles, report


def _is_gzip(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(2) == b"\x1f\x8b"
    except OSError as err:
        raise where(path, f"cannot open: {_one_line(err)}") from None


def _header(path: Path, compression) -> list[str]:
    """The sample barcodes of the header, checked; read apart so duplicates are seen."""
    opener = gzip.open if compression == "gzip" else open
    with opener(path, "rt", encoding="utf-8", newline="") as f:
        line = f.readline().rstrip("\r\n")
    if not line:
        raise where(path, "the file is empty")
    raw = [n.strip() for n in line.split("\t")[1:]]
    check_normalisation(raw, path)
    names = [nfc(n) for n in raw]  # NFC as every id the project reads: RNA and slides meet
    if not names:
        raise where(path, "no sample columns: expected a tab-separated genes x samples matrix")
    bad = [n for n in names if not _SAMPLE.match(n)]
    if bad:
        raise where(path, f"{len(bad)} header columns are not TCGA sample barcodes: {_few(bad)}")
    dup = list(dict.fromkeys(pd.Index(names)[pd.Index(names).duplicated()]))
    if dup:
        raise where(path, f"duplicate sample columns: {_few(dup)}")
    return names


def _genes(index: pd.Index, path: Path) -> pd.Index:
    genes = pd.Index([str(g).strip() for g in index], dtype=object)
    empty = (index.isna()) | (genes == "")
    if empty.any():
        raise where(path, f"data row {int(np.flatnonzero(empty)[0]) + 1} has no gene name")
    dup = list(dict.fromkeys(genes[genes.duplicated()]))
    if dup:  # Xena's matrix format has unique row ids; duplicates mean another kind of file
        raise where(path, f"duplicate gene rows: {_few(dup)}")
    return genes


def _numeric(table: pd.DataFrame, genes: pd.Index, names: list[str], path: Path) -> np.ndarray:
    """(genes, samples) float32; NaN stays NaN, a non-number is an error naming its cell."""
    if all(pd.api.types.is_numeric_dtype(t) for t in table.dtypes):
        return table.to_numpy(dtype=np.float32)
    values = table.apply(pd.to_numeric, errors="coerce")
    bad = (values.isna() & table.notna()).to_numpy()
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise where(path, f"non-numeric value {str(table.iat[row, col])!r} at gene "
                          f"{genes[row]!r}, sample {names[col]!r}")
    return values.to_numpy(dtype=np.float32)


def sample_type(barcode) -> str:
    """The two-digit sample-type code of a TCGA barcode (``01`` primary tumour), or ''."""
    match = _SAMPLE.match(str(barcode))
    return match.group(1) if match else ""
