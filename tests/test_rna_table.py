"""The RNA table reader: formats, TCGA barcodes, one-line errors naming file, row and column."""

import json

import numpy as np
import pandas as pd
import pytest

from rna2histo.cohort.rna_table import clean_rna, counted, patient_id, read_rna_table
from rna2histo.errors import UserError


def expression(ids=("P1", "P2", "P3"), genes=("CD3E", "MKI67", "EPCAM")) -> pd.DataFrame:
    values = np.arange(len(ids) * len(genes), dtype=np.float32).reshape(len(ids), len(genes)) / 4
    return pd.DataFrame(values, index=pd.Index(list(ids), name="sample"), columns=list(genes))


def write_text(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", ["rna.csv", "rna.tsv", "rna.txt", "rna.csv.gz", "rna.TSV.gz"])
def test_reads_text_tables(tmp_path, name):
    sep = "," if ".csv" in name.lower() else "\t"
    path = tmp_path / name
    expression().to_csv(path, sep=sep)
    rna = read_rna_table(path)
    assert rna.index.name == "patient_id" and list(rna.index) == ["P1", "P2", "P3"]
    assert list(rna.columns) == ["CD3E", "MKI67", "EPCAM"]
    assert (rna.dtypes == np.float32).all()
    np.testing.assert_array_equal(rna.to_numpy(), expression().to_numpy())


@pytest.mark.parametrize("ids_as", ["index", "column"])
def test_reads_parquet(tmp_path, ids_as):
    path = tmp_path / "rna.parquet"
    table = expression().astype(np.float64)
    (table if ids_as == "index" else table.reset_index()).to_parquet(path)
    rna = read_rna_table(path)
    assert list(rna.index) == ["P1", "P2", "P3"] and (rna.dtypes == np.float32).all()
    np.testing.assert_array_equal(rna.to_numpy(), expression().to_numpy())


def test_empty_cells_become_nan(tmp_path):
    path = write_text(tmp_path / "rna.csv", "id,A,B\nP1,1.5,\nP2,NA, 2\n")
    rna = read_rna_table(path)
    assert rna.isna().to_numpy().sum() == 2 and rna.loc["P2", "B"] == 2


def test_patient_id_reduces_tcga_barcodes():
    assert patient_id("TCGA-A1-A0SK-01A-12R-A084-07") == "TCGA-A1-A0SK"
    assert patient_id("TCGA-A1-A0SK-01") == "TCGA-A1-A0SK"
    assert patient_id("tcga-a1-a0sk.01") == "TCGA-A1-A0SK"
    assert patient_id("TCGA-A1-A0SK") == "TCGA-A1-A0SK"
    assert patient_id("  P007 ") == "P007"
    assert patient_id("TCGA-A1-A0SKX") == "TCGA-A1-A0SKX"  # not a barcode: kept as given
    assert patient_id(42) == "42"


def test_barcode_rows_are_reduced(tmp_path):
    path = tmp_path / "rna.tsv"
    ids = ("TCGA-AA-0001-01A-11R-A001-07", "TCGA-AA-0002-01A", "P3")
    expression(ids=ids).to_csv(path, sep="\t")
    assert list(read_rna_table(path).index) == ["TCGA-AA-0001", "TCGA-AA-0002", "P3"]


def raises(path, *fragments):
    """Assert reading `path` fails with one line naming the file and every fragment."""
    with pytest.raises(UserError) as err:
        read_rna_table(path)
    message = str(err.value)
    assert "\n" not in message and path.name in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_missing_file(tmp_path):
    raises(tmp_path / "nope.csv", "not found")


def test_unknown_extension(tmp_path):
    raises(write_text(tmp_path / "rna.xlsx", "x"), "unknown RNA table type '.xlsx'", ".parquet")


def test_no_gene_columns(tmp_path):
    raises(write_text(tmp_path / "rna.csv", "patient\nP1\nP2\n"), "no gene columns")


def test_wrong_separator_is_named(tmp_path):
    expression().to_csv(tmp_path / "rna.tsv")
    raises(tmp_path / "rna.tsv", "no gene columns", "no tab but commas", ".csv")


def test_empty_file_and_header_only(tmp_path):
    raises(write_text(tmp_path / "empty.csv", ""), "empty")
    raises(write_text(tmp_path / "header.csv", "id,A,B\n"), "no patient rows")


def test_duplicate_patient_ids_after_reduction(tmp_path):
    text = "id,A\nTCGA-AA-0001-01A,1\nTCGA-AA-0001-11A,2\nP2,3\nP2,4\nP3,5\n"
    path = write_text(tmp_path / "rna.csv", text)
    raises(path, "duplicate patient ids", "'TCGA-AA-0001'", "'P2'")


def test_duplicate_gene_columns(tmp_path):
    path = write_text(tmp_path / "rna.csv", "id,A,B,A\nP1,1,2,3\n")
    raises(path, "duplicate gene columns", "'A'")


def test_duplicate_gene_columns_in_parquet(tmp_path):
    path = tmp_path / "rna.parquet"
    pd.DataFrame({"id": ["P1"], "A": [1.0], "A ": [2.0]}).to_parquet(path)  # same once stripped
    raises(path, "duplicate gene columns", "'A'")


def test_non_numeric_value_names_row_column_and_count(tmp_path):
    text = "id,CD3E,MKI67\nP1,1,2\nP7,abc,3\nP8,4,n/a?\n"
    raises(
        write_text(tmp_path / "rna.csv", text),
        "non-numeric expression value 'abc'",
        "row 'P7'",
        "column 'CD3E'",
        "2 non-numeric cells in all",
    )


def test_non_numeric_value_in_parquet(tmp_path):
    path = tmp_path / "rna.parquet"
    pd.DataFrame({"id": ["P1", "P2"], "A": ["1.5", "high"], "B": [1.0, 2.0]}).to_parquet(path)
    raises(path, "'high'", "row 'P2'", "column 'A'")


def test_ragged_rows_and_missing_ids(tmp_path):
    raises(write_text(tmp_path / "ragged.csv", "id,A\nP1,1\nP2,2,3\n"), "cannot read as CSV")
    raises(write_text(tmp_path / "noid.csv", "id,A\nP1,1\n,2\n"), "data row 2 has no patient id")


def test_corrupt_parquet(tmp_path):
    raises(write_text(tmp_path / "rna.parquet", "not parquet"), "cannot read as parquet")


def test_clean_rna_counts():
    columns = {
        "A": [1.0, np.inf, np.nan],
        "B": [np.nan] * 3,
        "C": [-np.inf, 2.0, 3.0],
        "D": [1.0, 2.0, 3.0],
    }
    rna = pd.DataFrame(columns, index=pd.Index(["P1", "P2", "P3"], name="patient_id"))
    rna = rna.astype(np.float32)
    cleaned, report = clean_rna(rna)
    assert list(cleaned.columns) == ["A", "C", "D"]
    assert not np.isinf(cleaned.to_numpy()).any()
    assert report == {
        "infinite_values": 2,
        "genes_all_missing": {"count": 1, "items": ["B"]},
        "missing_values": 3,  # the two former inf and the one NaN, left for imputation
    }
    json.dumps(report)


def test_clean_rna_leaves_a_clean_table_alone():
    rna = expression().astype(np.float32)
    cleaned, report = clean_rna(rna)
    pd.testing.assert_frame_equal(cleaned, rna)
    assert report["infinite_values"] == report["missing_values"] == 0


def test_counted_lists_at_most_limit():
    assert counted(range(5), limit=2) == {"count": 5, "items": ["0", "1"]}
    assert counted({"a": 1, "b": 2}, limit=1) == {"count": 2, "items": {"a": 1}}
