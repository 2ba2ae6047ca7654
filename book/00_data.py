# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown] tags=[]
# # Data: a paired cohort of RNA profiles and H&E tiles
#
# ## Overview
# Every generator in this book learns one mapping: a patient's bulk RNA-seq profile $c$ to H&E
# tiles $x$ of that patient's tissue. This chapter builds the paired cohort they all train on,
# prepares the RNA the way the reference study did (with one correction), fixes the
# patient-level split, and shows what a training batch looks like.
#
# The reference study used TCGA-LUAD: RNA from UCSC Xena and diagnostic slides from the GDC.
# Those cannot be downloaded everywhere, so the default source is a **simulated paired cohort**
# in which a few latent tissue programs per patient drive both the RNA and the tissue. It is the
# one setting where we know the truth, and so can measure exactly whether a generator learned
# the link between RNA and morphology. Your own data enter through `source = "folder"`.
#
# The defaults below are a smoke run of seconds; `params/demo/00_data.yaml` is the embedded
# default of `make book` and `params/thesis/00_data.yaml` the study's size.

# %% tags=["parameters"]
source = "synthetic"  # "synthetic" (simulated, ground truth known), "folder" (your data) or "tcga"
cohort_dir = "data/cohorts/smoke"  # where the cohort is written, relative to the repository root
patients = 16  # synthetic: number of patients (16: both labels among the 2 test patients, chapter 06)
tiles_per_patient = 6  # synthetic: tiles per patient; tcga: at most this many per patient
image_size = 64  # tile side in pixels after resizing
genes = 500  # synthetic: genes per RNA profile
seed = 0  # seeds the simulation and the patient split
rna_file = ""  # folder: RNA table (CSV, TSV or parquet), one row per patient
images_dir = ""  # folder: one sub-folder of images per patient
tile_size = 256  # folder, tcga: tile side cut from the images (tcga: at 20x) before resizing
scale = 1.0  # folder: resample the images by this factor first (0.5 turns 40x into 20x)
project = "TCGA-LUAD"  # tcga: the GDC project (RNA from UCSC Xena, slides from the GDC)
max_patients = 0  # tcga: a seeded subset of the patients with RNA and a slide; 0 keeps all
workers = 2  # tcga: slides downloaded and tiled in parallel
keep_slides = True  # tcga: keep the downloaded slides; False deletes each once it is tiled
cache_dir = ""  # tcga: downloads and per-slide records; empty means next to cohort_dir

# %% tags=[]
# refuses a parameter papermill only warns of, and shows the values this chapter runs with
from rna2histo.book.parameters import check_parameters

params = check_parameters("00_data")

# %% tags=[]
import pandas as pd

from rna2histo.book import plots
from rna2histo.cohort import build_cohort, describe
from rna2histo.data.dataset import TileDataset, make_loader
from rna2histo.data.rna import fit_on_training, program_scores
from rna2histo.markers import MARKERS
from rna2histo.paths import resolve

# %% [markdown] tags=[]
# ## Building the cohort
# A cohort is one folder in one format whatever its source: `manifest.json` (what was built,
# how, and what was skipped), `rna.parquet` (patients x genes), `tiles.npy` (uint8 tiles, read
# memory-mapped), `tiles.parquet` (one row per tile) and `splits.csv`. The same command line
# builds it outside the book:
#
# ```
# python -m rna2histo cohort synthetic --out data/cohorts/demo --patients 40 --tiles-per-patient 24
# python -m rna2histo cohort folder --rna rna.csv --images slides/ --out data/cohorts/mine
# python -m rna2histo cohort tcga --project TCGA-LUAD --out data/cohorts/tcga_luad --max-patients 50
# ```
#
# In the simulation each patient has five program levels in $[0, 1]$: tumour **epithelium**,
# lymphocytic **immune** infiltrate, fibrous **stroma**, **proliferation** and air-space **lumen**. The RNA is a
# saturating, noisy function of the programs on Xena's log2(RSEM + 1) scale, with real marker
# symbols (PTPRC, CD3E, COL1A1, EPCAM, MKI67, ...) and thousands of neutral genes; the tiles are
# painted through a Beer-Lambert stain model from nuclei and tissue laid out by the same
# programs, with stain and position nuisances the RNA cannot explain.

# %% tags=[]
cohort = build_cohort(
    source,
    resolve(cohort_dir),
    patients=patients,
    tiles_per_patient=tiles_per_patient,
    image_size=image_size,
    genes=genes,
    seed=seed,
    rna=resolve(rna_file) if rna_file else None,
    images=resolve(images_dir) if images_dir else None,
    tile_size=tile_size,
    scale=scale,
    project=project,
    max_patients=max_patients or None,
    workers=workers,
    keep_slides=keep_slides,
    cache=resolve(cache_dir) if cache_dir else None,
)
print(describe(cohort))

# %% [markdown] tags=[]
# ## Tiles and their programs
# Each row is one patient: its tiles and, for the simulated cohort, its true program levels
# (epithelial, immune, stroma, proliferation, lumen). High-immune patients carry many small dark
# lymphocytes; high-stroma patients pink fibrous tissue with spindle nuclei; high-epithelial
# patients nests of large pale tumour nuclei.

# %% tags=[]
truth = cohort.patients_table
programs = None if truth is None else truth.filter(like="program_").rename(columns=lambda c: c[8:])
shown = cohort.patients()[:6]
fig = plots.tile_grid(cohort, shown, n_tiles=6, labels=None if programs is None else programs)

# %% [markdown] tags=[]
# ## RNA preprocessing
# As in the study, $\pm\infty$ becomes missing, missing values take the gene's median, and
# every gene is z-scored: $z_g = (x_g - \mu_g) / \sigma_g$. The study computed $\mu_g$,
# $\sigma_g$ and the medians over **all** patients, which leaks the test patients into
# training; here they are fitted on the training patients alone and saved with every model, so
# that a new profile is normalised exactly like the training data. Genes that are missing for
# every training patient or constant in training carry no information and are dropped.

# %% tags=[]
normaliser = fit_on_training(cohort)
pd.Series(normaliser.fit_report, name="fit on the training split")

# %% [markdown] tags=[]
# Program scores summarise the RNA the way a biologist would: the mean z-score of each
# program's marker genes. On the simulated cohort they can be checked against the truth; on
# real data they are what the evaluation chapter compares generated morphology with.

# %% tags=[]
z, alignment = normaliser.transform(cohort.rna)
scores = program_scores(z, MARKERS)
fig = plots.pca_by_program(z, programs if programs is not None else scores)

# %% [markdown] tags=[]
# ## The patient-level split
# Tiles of one patient share one RNA profile, so a tile-level split would show the test
# patients' RNA during training. The split is by patient, 70/15/15, seeded, saved in
# `splits.csv` and shared by every model (50 patients give the study's 34/8/8).

# %% tags=[]
cohort.split_counts()

# %% [markdown] tags=[]
# ## Does the RNA carry the morphology?
# A generator can only learn what the data contain. Per patient, the RNA program score
# (x-axis) against the mean ground-truth morphology of its tiles (y-axis): lymphocyte count,
# stroma fraction, epithelium fraction, mitoses and lumen fraction per tile. Strong rank correlations mean the
# RNA holds the information; the scatter around them is tissue heterogeneity and noise that no
# generator can recover from the RNA.

# %% tags=[]
ground_truth = cohort.tiles_table.filter(like="gt_").groupby(cohort.tiles_table.patient_id).mean()
if len(ground_truth.columns):
    pairs = {
        "immune": "gt_lymphocytes",
        "stroma": "gt_stroma_fraction",
        "epithelial": "gt_epithelium_fraction",
        "proliferation": "gt_mitoses",
        "lumen": "gt_lumen_fraction",
    }
    fig = plots.scatter_pairs(scores, ground_truth, pairs)

# %% [markdown] tags=[]
# ## The training data
# The Dataset reads tiles from the memory map one at a time and returns
# $(x, c, p)$: the tile in $[-1, 1]$, the patient's normalised RNA and the patient's index.
# Training tiles get the study's augmentations (flips, 90-degree rotations, +/-10% translation,
# colour jitter); translation is a crop of a reflect-padded tile, so no black borders appear.
# The generator chapters can drop the colour jitter (`augment = "geometric"`, chapter 01 says
# why): a generator learns to draw the stains it is shown.

# %% tags=[]
train = TileDataset(cohort, "train", normaliser)
x, c, p = next(iter(make_loader(train, batch_size=8, shuffle=True, seed=seed)))
print(f"x {tuple(x.shape)} in [{x.min():.0f}, {x.max():.0f}], c {tuple(c.shape)}, p {tuple(p.shape)}")

# %% tags=[]
fig = plots.augmentation_examples(train, index=0, n=6, seed=seed)

# %% [markdown] tags=[]
# ## Summary
# - One cohort format for every source; builds are atomic and record what they skipped.
# - RNA is median-imputed and z-scored with statistics of the training patients only.
# - The split is by patient and fixed for every model.
# - In the simulated cohort the RNA programs visibly drive the tissue, and we keep the truth.
#
# ## What's next
# The generator chapters train four conditional models on this cohort: a cGAN, a cVAE, a
# conditional diffusion model and the study's hybrid GAN-VAE.
