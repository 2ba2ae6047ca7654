"""`generate` and checkpoints against hostile input (issue 23, defects 3, 4, 5 and 9): each is
refused in one line with exit status 2, and nothing is written or lost."""

import pandas as pd
import pytest
import torch

from rna2histo.__main__ import main
from rna2histo.errors import UserError
from rna2histo.generate import file_stems, generate, load_run
from rna2histo.runs import load_checkpoint
from rna2histo.training.loop import fit

from .conftest import write_tiny_cohort


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("generate")
    write_tiny_cohort(root / "cohort", patients=10, tiles_per_patient=2, size=16, genes=24)
    run = fit("cvae", root / "cohort", root / "run", epochs=1, batch_size=8, device="cpu", progress=False,
              sample_patients=1)
    rna = pd.read_parquet(root / "cohort" / "rna.parquet").iloc[:3]
    return run, rna


def cli(capsys, *args):
    """Exit status, stderr lines and stdout of ``python -m rna2histo ARGS`` run in this process."""
    status = main([str(a) for a in args])
    captured = capsys.readouterr()
    return status, captured.err.strip().splitlines(), captured.out


def refused(capsys, *args, fragments=()):
    status, lines, _ = cli(capsys, *args)
    assert status == 2 and 1 <= len(lines) <= 3 and "Traceback" not in "\n".join(lines), lines
    for fragment in fragments:
        assert fragment in lines[-1], lines
    return lines


def write_table(tmp_path, rna, name="rna.csv"):
    rna.to_csv(tmp_path / name)
    return tmp_path / name


def test_defect_3_a_table_sharing_no_genes_with_the_run_is_refused(trained, tmp_path, capsys):
    run, rna = trained
    renamed = rna.set_axis([f"X{i}" for i in range(rna.shape[1])], axis=1)
    refused(capsys, "generate", "--run", run, "--rna", write_table(tmp_path, renamed), "--out", tmp_path / "o",
            fragments=["0 of the run's 24 genes", "at least 50%"])
    assert not (tmp_path / "o").exists()


def test_defect_3_values_far_off_the_training_scale_or_infinite_are_refused(trained, tmp_path, capsys):
    run, rna = trained
    huge = rna.copy()
    huge.iloc[1, 2] = 1e30
    refused(capsys, "generate", "--run", run, "--rna", write_table(tmp_path, huge), "--out", tmp_path / "o",
            fragments=[f"row '{rna.index[1]}', column 'G2'", "standard deviations"])
    raw_counts = 2.0 ** rna  # the training RNA is log2-like; these are its linear values
    refused(capsys, "generate", "--run", run, "--rna", write_table(tmp_path, raw_counts), "--out", tmp_path / "o",
            fragments=["median", "log2"])
    loaded = load_run(run)
    with pytest.raises(UserError, match="is not a finite value"):
        generate(loaded, rna.assign(G3=float("inf")), n=1)
    assert not (tmp_path / "o").exists()


def test_defect_3_the_imputed_genes_are_counted_truly(trained, tmp_path, capsys):
    run, rna = trained
    table = rna.drop(columns=["G0"])
    table.loc[table.index[0], "G5"] = float("nan")  # an empty cell: imputed, not refused
    status, _, out = cli(capsys, "generate", "--run", run, "--rna", write_table(tmp_path, table), "--n", 1,
                         "--out", tmp_path / "o")
    assert status == 0 and "1 missing from the table, 2 imputed" in out
    _, _, alignment = generate(load_run(run), table, n=1)
    assert alignment["genes_missing_filled_with_median"] == 1 and alignment["genes_imputed"] == 2


@pytest.mark.parametrize("n", ["0", "-1", "1.5", "x"])
def test_defect_4_a_tile_count_below_one_or_not_whole_is_refused(trained, tmp_path, capsys, n):
    run, rna = trained
    refused(capsys, "generate", "--run", run, "--rna", write_table(tmp_path, rna), "--n", n,
            "--out", tmp_path / "o", fragments=["--n"])
    with pytest.raises(UserError, match="n: tiles per profile"):
        generate(load_run(run), rna, n=0)


def test_defect_4_an_out_that_cannot_be_written_is_one_line(trained, tmp_path, capsys):
    run, rna = trained
    blocker = tmp_path / "a_file"
    blocker.write_text("mine")  # a folder under a file cannot be made, even by root
    refused(capsys, "generate", "--run", run, "--rna", write_table(tmp_path, rna), "--n", 1,
            "--out", blocker / "out", fragments=["cannot write there"])
    assert blocker.read_text() == "mine"


def test_defect_5_patients_whose_safe_names_meet_get_two_files(trained, tmp_path, capsys):
    # a_b and A_B meet on a case-insensitive file system; '..' is no name at all
    a, b, c, dots = _hashes("a/b", "a_b", "A_B", "..")
    assert file_stems(["a/b", "a_b", "A_B", "P1", ".."]) == [f"a_b-{a}", f"a_b-{b}", f"A_B-{c}", "P1", f"_-{dots}"]
    run, rna = trained
    table = rna.set_axis(["a/b", "a_b", "c"], axis=0)
    status, _, _ = cli(capsys, "generate", "--run", run, "--rna", write_table(tmp_path, table), "--n", 2,
                    "--out", tmp_path / "o")
    index = pd.read_csv(tmp_path / "o" / "index.csv", keep_default_na=False)
    assert status == 0 and len(set(index.file)) == 6 and set(index.patient_id) == {"a/b", "a_b", "c"}
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == sorted([*index.file, "index.csv"])


def _hashes(*ids):
    import hashlib

    return [hashlib.sha1(i.encode()).hexdigest()[:8] for i in ids]


def test_defect_5_an_earlier_out_is_refused_unless_overwrite_which_keeps_a_users_files(trained, tmp_path,
                                                                                       capsys):
    run, rna = trained
    table, out = write_table(tmp_path, rna), tmp_path / "o"
    assert cli(capsys, "generate", "--run", run, "--rna", table, "--n", 2, "--out", out)[0] == 0
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    (out / "notes.txt").write_text("mine")
    refused(capsys, "generate", "--run", run, "--rna", table, "--n", 1, "--seed", 5, "--out", out,
            fragments=["is not empty", "--overwrite"])
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != "notes.txt"} == first
    assert cli(capsys, "generate", "--run", run, "--rna", table, "--n", 1, "--out", out, "--overwrite")[0] == 0
    index = pd.read_csv(out / "index.csv")
    assert sorted(p.name for p in out.iterdir()) == sorted([*index.file, "index.csv", "notes.txt"])
    assert len(index) == 3 and (out / "notes.txt").read_text() == "mine"


def test_defect_9_a_checkpoint_missing_keys_names_them(trained, tmp_path, capsys):
    run, rna = trained
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    broken = tmp_path / "run" / "checkpoints" / "best.pt"
    broken.parent.mkdir(parents=True)
    torch.save({k: v for k, v in state.items() if k not in ("normaliser", "config")}, broken)
    refused(capsys, "generate", "--run", tmp_path / "run", "--rna", write_table(tmp_path, rna), "--out",
            tmp_path / "o", fragments=[str(broken), "lacks config, normaliser"])
    with pytest.raises(UserError, match="lacks optimizers"):
        torch.save({k: v for k, v in state.items() if k != "optimizers"}, broken)
        load_checkpoint(broken, needs=("optimizers",))


class Payload:
    def __reduce__(self):
        return (print, ("this would run on load",))


def test_defect_9_a_pickled_checkpoint_is_refused_without_advice_to_unpickle(trained, tmp_path, capsys):
    run, rna = trained
    unsafe = tmp_path / "run" / "checkpoints" / "best.pt"
    unsafe.parent.mkdir(parents=True)
    torch.save({"format_version": 1, "payload": Payload()}, unsafe)
    lines = refused(capsys, "generate", "--run", tmp_path / "run", "--rna", write_table(tmp_path, rna),
                    "--out", tmp_path / "o", fragments=["refused: it holds pickled Python objects"])
    assert len(lines) == 1 and "weights_only" not in lines[0]
