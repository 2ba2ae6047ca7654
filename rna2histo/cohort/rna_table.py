"""Read a patients x genes RNA table (CSV, TSV or parquet) and clean it for a cohort.

Used by every source that takes expression from a file (folder, tcga). The table has one row per
patient: the first column is the patient id, every other column a gene symbol. TCGA sample
barcodes (``TCGA-A1-A0SK-01A-12R-A084-07``) are reduced to the 12-character patient id
(``TCGA-A1-A0SK``), so that RNA rows and image folders named after different samples of one
patient meet. Ids are Unicode-normalised (NFC) wherever they are read, so that 'Müller' typed
in a table meets a macOS folder of the same name (stored decomposed, NFD). Every problem with
the file is a one-line `UserError` that names the file and, for a bad value, its row and column.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import where

SEPARATORS = {".csv": ",", ".tsv": "\t", ".txt": "\t"}
PARQUET = (".parquet", ".pq")
LISTED = 50  # how many names a report or message lists before it only counts

# project-TSS-participant, then the end or the rest of the barcode (sample, portion, ...)
_TCGA = re.compile(r"^(TCGA-[A-Z0-9]{2}-[A-Z0-9]{4})(?:[-._]|$)", re.IGNORECASE)


def patient_id(barcode) -> str:
    """The patient of a sample: a TCGA barcode's first 12 characters, other ids stripped; NFC."""
    text = nfc(barcode).strip()
    match = _TCGA.match(text)
    return match.group(1).upper() if match else text


def nfc(text) -> str:
    """`text` in Unicode normal form C: one spelling of ids that look alike ('ü', 'u' + '¨')."""
    return unicodedata.normalize("NFC", str(text))


def check_normalisation(ids, place) -> None:
    """A UserError naming two of `ids` that differ only in Unicode normalisation, if any.

    Once normalised they would be one patient; which RNA or images belong to whom is then a
    guess, so the user must rename one. `place` (a path or URL) prefixes the message.
    """
    seen: dict[str, str] = {}
    for raw in map(str, ids):
        first = seen.setdefault(nfc(raw), raw)
        if first != raw:  # same key, different spelling
            # ascii(): both would print identically; the escapes show how they differ
            raise where(place, f"patient ids {first!a} and {raw!a} differ only in "
                               "Unicode normalisation (NFC vs NFD), so would be one patient; "
                               "rename one")


def counted(items, limit: int = LISTED) -> dict:
    """A JSON-able report entry: how many, and the first `limit` of them (a list or a dict)."""
    if isinstance(items, dict):
        return {"count": len(items), "items": dict(list(items.items())[:limit])}
    items = list(items)
    return {"count": len(items), "items": [str(i) for i in items[:limit]]}


def read_rna_table(path: str | Path) -> pd.DataFrame:
    """Patients x genes, float32, indexed by `patient_id` (str); NaN where a cell is empty."""
    path = Path(path)
    if not path.is_file():
        raise where(path, "RNA table not found" if not path.exists() else "is not a file")
    raw = _read_raw(path)
    return _to_expression(raw, path)


def clean_rna(rna: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Turn +/-inf into NaN and drop genes missing for every patient; other NaN stay for imputation.

    The remaining NaN are imputed later with training-split medians, which only the normaliser
    knows. The report counts what was changed, for the cohort manifest.
    """
    values = rna.to_numpy(dtype=np.float32)
    infinite = np.isinf(values)
    rna = rna.mask(infinite) if infinite.any() else rna
    empty = rna.columns[rna.isna().all(axis=0).to_numpy()]
    rna = rna.drop(columns=empty)
    report = {
        "infinite_values": int(infinite.sum()),
        "genes_all_missing": counted(empty),
        "missing_values": int(rna.isna().to_numpy().sum()),
    }
    return rna, report


def _read_raw(path: Path) -> pd.DataFrame:
    """The table as stored: first column the id, columns named by the header, values not checked."""
    suffix = _suffix(path)
    try:
        if suffix in PARQUET:
            return _read_parquet(path)
        return _read_text(path, SEPARATORS[suffix])
    except (OSError, UnicodeDecodeError, ValueError, pd.errors.ParserError) as err:
        # pyarrow's ArrowInvalid is a ValueError; messages may span lines, the error must not
        kind = "parquet" if suffix in PARQUET else suffix.lstrip(".").upper()
        raise where(path, f"cannot read as {kind}: {_one_line(err)}") from None


def _suffix(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    suffix = suffixes[-1] if suffixes else ""
    if suffix not in SEPARATORS and suffix not in PARQUET:
        known = ", ".join([*SEPARATORS, *PARQUET])
        found = repr(suffix) if suffix else "(no extension)"
        raise where(path, f"unknown RNA table type {found}; expected {known} (optionally .gz)")
    return suffix


def _read_text(path: Path, sep: str) -> pd.DataFrame:
    # The header is read apart so that duplicate gene names are seen (pandas would rename them)
    # and so that the first column's name, often empty, cannot clash.
    try:
        header = pd.read_csv(path, sep=sep, header=None, nrows=1, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise where(path, "the file is empty") from None
    names = [str(n).strip() for n in header.iloc[0]]
    other = {",": "\t", "\t": ","}[sep]
    if len(names) == 1 and other in names[0]:
        kind = {",": "comma", "\t": "tab"}
        raise where(
            path,
            f"no gene columns: the header has no {kind[sep]} but {kind[other]}s; "
            f"name the file {'.csv' if other == ',' else '.tsv'}",
        )
    _check_header(names, path)
    try:
        table = pd.read_csv(path, sep=sep, header=None, skiprows=1, dtype={0: str})
    except pd.errors.EmptyDataError:
        raise where(path, "no patient rows below the header") from None
    if table.shape[1] != len(names):
        raise where(path, f"the header has {len(names)} columns but the rows {table.shape[1]}")
    table.columns = names
    return table


def _read_parquet(path: Path) -> pd.DataFrame:
    table = pd.read_parquet(path)
    if not isinstance(table.index, pd.RangeIndex):  # ids stored as the index
        table = table.reset_index()
    table.columns = [str(c).strip() for c in table.columns]
    _check_header(list(table.columns), path)
    return table


def _check_header(names: list[str], path: Path) -> None:
    genes = names[1:]
    if not genes:
        raise where(path, "no gene columns: expected the patient id, then one column per gene")
    if "" in genes:
        raise where(path, f"column {genes.index('') + 2} has no gene name in the header")
    dup = pd.Index(genes)
    dup = list(dict.fromkeys(dup[dup.duplicated()]))
    if dup:
        raise where(path, f"duplicate gene columns: {_few(dup)}")


def _to_expression(raw: pd.DataFrame, path: Path) -> pd.DataFrame:
    ids = raw.iloc[:, 0]
    missing = (ids.isna() | (ids.astype(str).str.strip() == "")).to_numpy()
    if missing.any():
        raise where(path, f"data row {int(np.flatnonzero(missing)[0]) + 1} has no patient id")
    check_normalisation((str(i).strip() for i in ids), path)
    ids = pd.Index([patient_id(i) for i in ids], name="patient_id", dtype=object)
    dup = list(dict.fromkeys(ids[ids.duplicated()]))
    if dup:
        raise where(path, f"duplicate patient ids (after reducing TCGA barcodes): {_few(dup)}")
    genes = raw.iloc[:, 1:]
    values = genes.apply(_numeric) if _has_text(genes) else genes
    _check_numeric(genes, values, ids, path)
    return pd.DataFrame(values.to_numpy(dtype=np.float32), index=ids, columns=list(genes.columns))


def _has_text(genes: pd.DataFrame) -> bool:
    return not all(pd.api.types.is_numeric_dtype(t) for t in genes.dtypes)


def _numeric(column: pd.Series) -> pd.Series:
    if pd.api.types.is_numeric_dtype(column):
        return column
    return pd.to_numeric(column.astype(object), errors="coerce")  # NaN where not a number


def _check_numeric(genes: pd.DataFrame, values: pd.DataFrame, ids: pd.Index, path: Path) -> None:
    """Name the first cell (in reading order) that is present but not a number."""
    bad = (values.isna() & genes.notna()).to_numpy()
    if not bad.any():
        return
    row, col = np.argwhere(bad)[0]  # row-major: the first offending cell as the file reads
    value = genes.iat[row, col]
    n = int(bad.sum())
    others = f"; {n} non-numeric cells in all" if n > 1 else ""
    raise where(
        path,
        f"non-numeric expression value {str(value)!r} at row {ids[row]!r}, "
        f"column {genes.columns[col]!r}{others}",
    )


def _few(names: list, limit: int = 5) -> str:
    shown = ", ".join(repr(str(n)) for n in names[:limit])
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return f"{shown}{more}"


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split()) or type(err).__name__
