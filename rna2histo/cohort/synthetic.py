"""The simulated paired cohort: latent tissue programs drive both the RNA and the H&E tiles.

Programs. Each patient i has levels p_ik in [0, 1] of five tissue programs: tumour epithelium,
lymphocytic immune infiltrate, fibrous stroma, proliferation and lumen (air space). They are
p_ik = sigmoid(mu_k + 1.3 z_ik) with z_i ~ N(0, CORRELATION): epithelium and stroma compete
(r = -0.6), proliferating tumours are epithelium-rich (0.4), infiltrates avoid dense tumour (-0.3).

RNA, on the scale of UCSC Xena HiSeqV2, log2(RSEM + 1). For a marker gene g of program k, bulk
expression is a mixture of cells: 2^x = 2^b_g (1 + (2^A_g - 1) H(d_ik)), a floor b_g plus a
saturating Hill curve H(d) = d^n / (d^n + K^n) of the program's drive d_ik, which is p_ik except
  proliferation: d = p_prolif (0.25 + 0.75 p_epi)  (dividing cells are mostly tumour cells),
  B-cell genes (MS4A1, CD19, CD79A, CXCL13): d = min(1, 2 s_i p_immune), s_i the B-cell share,
  lung-lineage genes (NKX2-1, NAPSA, SFTPB, SFTPC): d = p_epi (0.4 + 0.6 l_i), l_i differentiation.
Every gene then gets
  x_ig = [marker term, or b_g] + c_g.(p_i - 1/2) + L_g.f_i + beta_{batch(i),g} + sigma_g eps_ig
with sparse cross-loadings c_g (a third of the markers, a tenth of the neutral genes), nuisance
factors f_i ~ N(0, I) shared by modules of neutral genes (other biology the tiles do not show),
three batches, and noise larger for weakly expressed genes. Finally a value drops to 0 with
probability sigmoid(-3 (x - 1)) (dropout hits low expression) and all are clipped to [0, 20].

Tiles: `tissue.render_tile` paints each tile from the patient's programs, moved by a slide
position field and tile noise, with the patient's own stain; the RNA explains neither.
Every random draw comes from numpy Generators spawned from one SeedSequence(seed), per patient
and per tile, so a cohort is byte-identical for the same arguments and a patient's data do not
depend on how many patients are built.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .. import markers
from ..errors import UserError
from . import tissue
from .format import CohortWriter
from .split import split_patients

# The package's programs and markers: the same lists score real RNA.
PROGRAMS, MARKERS = markers.PROGRAMS, markers.MARKERS
B_CELL = {"MS4A1", "CD19", "CD79A", "CXCL13"}  # respond to the B-cell share of the infiltrate
LUNG_LINEAGE = {"NKX2-1", "NAPSA", "SFTPB", "SFTPC"}  # respond to differentiation
LOGIT_MEAN = dict(zip(PROGRAMS, [0.3, -0.4, -0.1, -0.5, -0.9]))  # mu_k
LOGIT_SD = 1.3
CORRELATION = np.array(
    [  # epithelial, immune, stroma, proliferation, lumen
        [1.0, -0.3, -0.6, 0.4, 0.1],
        [-0.3, 1.0, 0.1, -0.1, -0.1],
        [-0.6, 0.1, 1.0, -0.3, -0.3],
        [0.4, -0.1, -0.3, 1.0, 0.0],
        [0.1, -0.1, -0.3, 0.0, 1.0],
    ]
)
FACTORS, BATCHES = 6, 3  # nuisance latent factors and batches of the RNA
MAX_GENES = 20_000
STRIDE = 4  # tiles are sampled every 4th tile of a notional slide grid


@dataclass
class Patient:
    """One simulated patient: programs, RNA nuisances, stain, and the seeds of its draws."""

    programs: dict[str, float]  # p_k
    nuisance: dict[str, float]  # batch, b_cell_share, lung_lineage, factor_1..FACTORS
    stain: tissue.Stain
    slide: tissue.Slide
    rna_seed: np.random.SeedSequence
    tile_seeds: list[np.random.SeedSequence]

    def record(self) -> dict[str, float]:
        """The patient's row of the patients table."""
        row = {f"program_{k}": v for k, v in self.programs.items()}
        return {**row, **self.nuisance, **self.stain.record()}


def draw_patient(seq: np.random.SeedSequence, tiles: int) -> Patient:
    """Programs p = sigmoid(mu + LOGIT_SD z), z ~ N(0, CORRELATION), and the patient's nuisances."""
    programs_seq, rna_seq, stain_seq, tiles_seq = seq.spawn(4)
    rng = np.random.default_rng(programs_seq)
    z = np.linalg.cholesky(CORRELATION) @ rng.standard_normal(len(PROGRAMS))
    logits = np.array(list(LOGIT_MEAN.values())) + LOGIT_SD * z
    programs = dict(zip(PROGRAMS, (1 / (1 + np.exp(-logits))).tolist()))
    nuisance = {
        "batch": int(rng.integers(BATCHES)),
        "b_cell_share": float(rng.beta(2, 4)),
        "lung_lineage": float(rng.beta(4, 2)),
        **{f"factor_{j + 1}": float(v) for j, v in enumerate(rng.standard_normal(FACTORS))},
    }
    stain_rng = np.random.default_rng(stain_seq)
    stain, slide = tissue.draw_stain(stain_rng), tissue.draw_slide(programs, stain_rng)
    return Patient(programs, nuisance, stain, slide, rna_seq, tiles_seq.spawn(tiles))


@dataclass
class GeneModel:
    """Per-gene parameters of the RNA model (module docstring), genes in column order."""

    genes: list[str]
    baseline: np.ndarray  # (G,) b_g: the floor of a marker, the level of a neutral gene
    gain: np.ndarray  # (G,) A_g, log2 fold at saturation; 0 for neutral genes
    half: np.ndarray  # (G,) K_g
    hill: np.ndarray  # (G,) n_g
    program: np.ndarray  # (G,) index of a marker's program in PROGRAMS, -1 for neutral genes
    cross: np.ndarray  # (G, programs) c_g
    loadings: np.ndarray  # (G, FACTORS) L_g
    batch: np.ndarray  # (G, BATCHES) beta
    noise_sd: np.ndarray  # (G,) sigma_g
    b_cell: np.ndarray  # (G,) bool, B-cell genes
    lineage: np.ndarray  # (G,) bool, lung-lineage genes


def gene_model(genes: int, seq: np.random.SeedSequence) -> GeneModel:
    """Every gene's parameters, sorted by symbol as Xena does; markers' do not depend on `genes`."""
    marker_seq, neutral_seq = seq.spawn(2)
    markers_ = _marker_genes(np.random.default_rng(marker_seq))
    neutral = _neutral_genes(np.random.default_rng(neutral_seq), genes - len(markers_["genes"]))
    names = markers_.pop("genes") + neutral.pop("genes")
    order = np.argsort(names, kind="stable")
    fields = {k: np.concatenate([markers_[k], neutral[k]])[order] for k in markers_}
    return GeneModel(genes=[names[i] for i in order], **fields)


def _marker_genes(rng: np.random.Generator) -> dict:
    """Markers: floor b in [2, 7], up to b + A <= 18 at saturation, half-saturation K, Hill n."""
    names = [g for k in PROGRAMS for g in MARKERS[k]]
    m = len(names)
    floor = rng.uniform(2.0, 7.0, m)
    return {
        "genes": names,
        "baseline": floor,
        "gain": np.minimum(rng.uniform(4.0, 9.0, m), 18.0 - floor),
        "half": rng.uniform(0.25, 0.6, m),
        "hill": rng.uniform(1.2, 3.0, m),
        "program": np.array([PROGRAMS.index(k) for k in PROGRAMS for _ in MARKERS[k]]),
        "cross": _sparse_cross(rng, m, 1 / 3, 1.0),  # a third also follow another program
        "loadings": np.zeros((m, FACTORS)),
        "batch": rng.normal(0, 0.15, (m, BATCHES)),
        "noise_sd": _noise_sd(rng, floor),
        "b_cell": np.isin(names, list(B_CELL)),
        "lineage": np.isin(names, list(LUNG_LINEAGE)),
    }


def _neutral_genes(rng: np.random.Generator, n: int) -> dict:
    """Neutral genes: levels from a low and a bulk mode, half of them in nuisance modules."""
    low = rng.random(n) < 0.25  # a quarter are barely expressed
    level = np.where(low, rng.uniform(0, 4, n), np.clip(rng.normal(9, 2.2, n), 3, 16))
    loadings = np.zeros((n, FACTORS))
    member = np.flatnonzero(rng.random(n) < 0.5)
    loadings[member, rng.integers(FACTORS, size=len(member))] = rng.normal(0, 0.6, len(member))
    return {
        "genes": [f"GENE{j + 1:05d}" for j in range(n)],
        "baseline": level,
        "gain": np.zeros(n),
        "half": np.ones(n),
        "hill": np.ones(n),
        "program": -np.ones(n, dtype=int),
        "cross": _sparse_cross(rng, n, 0.1, 0.6),  # a tenth are weakly program-linked
        "loadings": loadings,
        "batch": rng.normal(0, 0.15, (n, BATCHES)),
        "noise_sd": _noise_sd(rng, level),
        "b_cell": np.zeros(n, dtype=bool),
        "lineage": np.zeros(n, dtype=bool),
    }


def _sparse_cross(rng: np.random.Generator, n: int, share: float, sd: float) -> np.ndarray:
    """(n, programs) loadings: a `share` of rows load N(0, sd^2) on one random program."""
    cross = np.zeros((n, len(PROGRAMS)))
    rows = np.flatnonzero(rng.random(n) < share)
    cross[rows, rng.integers(len(PROGRAMS), size=len(rows))] = rng.normal(0, sd, len(rows))
    return cross


def _noise_sd(rng: np.random.Generator, level: np.ndarray) -> np.ndarray:
    """sigma_g: log-scale noise is larger for weakly expressed genes (few reads)."""
    return (0.2 + 0.5 * np.exp(-level / 4)) * np.exp(rng.normal(0, 0.25, len(level)))


def drive(patient: Patient, model: GeneModel) -> np.ndarray:
    """(G,) d_g: the program level each marker responds to, interactions included."""
    p, nuisance = patient.programs, patient.nuisance
    d = np.array([p[k] for k in PROGRAMS])[np.maximum(model.program, 0)]
    dividing = p["proliferation"] * (0.25 + 0.75 * p["epithelial"])  # mostly tumour cells
    d = np.where(model.program == PROGRAMS.index("proliferation"), dividing, d)
    b_cells = min(1.0, 2 * nuisance["b_cell_share"] * p["immune"])
    d = np.where(model.b_cell, b_cells, d)
    differentiated = p["epithelial"] * (0.4 + 0.6 * nuisance["lung_lineage"])
    return np.where(model.lineage, differentiated, d)


def simulate_rna(patient: Patient, model: GeneModel) -> np.ndarray:
    """(G,) float32 log2(RSEM + 1) profile of one patient; the equations of the docstring."""
    rng = np.random.default_rng(patient.rna_seed)
    d = drive(patient, model)
    saturation = d**model.hill / (d**model.hill + model.half**model.hill)  # H(d), 0 for neutral
    x = model.baseline + np.log2(1 + (2**model.gain - 1) * saturation)
    p = np.array([patient.programs[k] for k in PROGRAMS])
    factors = np.array([patient.nuisance[f"factor_{j + 1}"] for j in range(FACTORS)])
    x += (model.cross * (p - 0.5)).sum(1) + (model.loadings * factors).sum(1)
    x += model.batch[:, patient.nuisance["batch"]] + model.noise_sd * rng.standard_normal(len(x))
    dropout = rng.random(len(x)) < 1 / (1 + np.exp(3 * (x - 1)))  # likelier when expression is low
    return np.clip(np.where(dropout, 0.0, x), 0, 20).astype(np.float32)


def patient_tiles(patient_id: str, patient: Patient, image_size: int):
    """(K, S, S, 3) tiles of one patient and their rows of the tiles table.

    Tile t sits at grid cell (t mod c, t div c) * STRIDE of a notional slide (c = ceil(sqrt K));
    its position moves its local programs through the patient's slide field.
    """
    cols = int(np.ceil(np.sqrt(len(patient.tile_seeds))))
    images, rows = [], []
    for t, seq in enumerate(patient.tile_seeds):
        rng = np.random.default_rng(seq)
        col, row = STRIDE * (t % cols), STRIDE * (t // cols)
        q = patient.slide.local(col * tissue.TILE_UM, row * tissue.TILE_UM, rng)
        tile = tissue.render_tile(q, patient.stain, rng, image_size)
        images.append(tile.image)
        where = {"patient_id": patient_id, "origin": "synthetic", "x": col * image_size}
        where["y"] = row * image_size
        rows.append({**where, **tile.truth, **{f"gt_program_{k}": v for k, v in q.items()}})
    return np.stack(images), pd.DataFrame(rows)


def build_synthetic(
    out, patients=40, tiles_per_patient=24, image_size=64, seed=0, genes=2000, progress=False
) -> Path:
    """Simulate a paired cohort (RNA profiles, H&E tiles, ground truth) and write it to `out`."""
    _check_args(patients, tiles_per_patient, image_size, seed, genes)
    genes_seq, patients_seq = np.random.SeedSequence(seed).spawn(2)
    cohort = [draw_patient(s, tiles_per_patient) for s in patients_seq.spawn(patients)]
    width = max(4, len(str(patients)))
    ids = pd.Index([f"SIM-{i + 1:0{width}d}" for i in range(patients)], name="patient_id")
    model = gene_model(genes, genes_seq)
    profiles = np.stack([simulate_rna(p, model) for p in cohort])  # (patients, genes)
    rna = pd.DataFrame(profiles, index=ids, columns=model.genes)
    params = {
        "patients": patients,
        "tiles_per_patient": tiles_per_patient,
        "image_size": image_size,
        "seed": seed,
        "genes": genes,
    }
    with CohortWriter(out, image_size) as writer:
        tables = []
        for patient_id, patient in _progress(zip(ids, cohort), progress, patients):
            tiles, table = patient_tiles(patient_id, patient, image_size)
            writer.add_tiles(tiles)
            tables.append(table)
        tiles_table = pd.concat(tables, ignore_index=True)
        return writer.commit(
            source="synthetic",
            params=params,
            rna=rna,
            tiles_table=tiles_table,
            splits=split_patients(list(ids), seed),
            mpp=tissue.TILE_UM / image_size,
            report=_report(rna, image_size),
            patients_table=pd.DataFrame([p.record() for p in cohort], index=ids),
        )


def _progress(items, show: bool, total: int):
    if not show:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, total=total, desc="synthetic patients", unit="patient")


def _check_args(patients, tiles_per_patient, image_size, seed, genes) -> None:
    """One-line `UserError`s for parameters the simulation cannot honour."""
    n_markers = sum(map(len, MARKERS.values()))
    limits = [
        ("patients", patients, 3, 100_000, "a train, a val and a test patient at least"),
        ("tiles_per_patient", tiles_per_patient, 1, 10_000, "tiles of each patient"),
        ("image_size", image_size, 32, 512, "pixels across a 64 um tile"),
        ("seed", seed, 0, 2**63 - 1, "a non-negative integer"),
        ("genes", genes, n_markers, MAX_GENES, f"the {n_markers} marker genes plus neutral ones"),
    ]
    for name, value, low, high, meaning in limits:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise UserError(f"{name} must be an integer ({meaning}), got {value!r}")
        if not low <= value <= high:
            raise UserError(f"{name} must be between {low} and {high} ({meaning}), got {value}")


GROUND_TRUTH = {
    "gt_tumour_nuclei": "tumour nuclei not in mitosis, centre inside the tile",
    "gt_lymphocytes": "lymphocytes, centre inside the tile",
    "gt_fibroblasts": "fibroblast (spindle) nuclei, centre inside the tile",
    "gt_mitoses": "mitotic figures (tumour cells in division), disjoint from gt_tumour_nuclei",
    "gt_epithelium_fraction": "pixel fraction of tumour epithelium",
    "gt_stroma_fraction": "pixel fraction of stroma",
    "gt_lumen_fraction": "pixel fraction of lumen / air space",
    "gt_program_<k>": "the tile's local program level q_k: the patient's p_k moved by position"
    " and tile noise",
}


def _report(rna: pd.DataFrame, image_size: int) -> dict:
    """What a researcher needs to know about the simulation's ground truth."""
    values = rna.to_numpy()
    return {
        "programs": list(PROGRAMS),
        "marker_genes": MARKERS,
        "mpp": tissue.TILE_UM / image_size,
        "program_model": {
            "levels": "p = sigmoid(logit_mean + logit_sd z), z ~ N(0, correlation)",
            "logit_mean": LOGIT_MEAN,
            "logit_sd": LOGIT_SD,
            "correlation": CORRELATION,
        },
        "rna": {
            "scale": "log2(RSEM + 1), as UCSC Xena HiSeqV2",
            "marker_genes": sum(map(len, MARKERS.values())),
            "neutral_genes": rna.shape[1] - sum(map(len, MARKERS.values())),
            "nuisance_factors": FACTORS,
            "batches": BATCHES,
            "b_cell_genes": sorted(B_CELL),
            "lung_lineage_genes": sorted(LUNG_LINEAGE),
            "zero_fraction": float((values == 0).mean()),
            "max": float(values.max()),
        },
        **tissue.describe(),
        "ground_truth": GROUND_TRUTH,
        "patients_table": "program_* levels; RNA nuisances batch, b_cell_share, lung_lineage,"
        " factor_*; stain_*",
    }
