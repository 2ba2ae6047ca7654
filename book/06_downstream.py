# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown] tags=[]
# # Compact RNA latents, and what synthetic tiles are worth downstream
#
# The reference study set out to encode RNA into a compact latent before conditioning its
# generators (a PCA or a beta-VAE of ~200 dimensions, as RNA-GAN and RNA-CDM do), and its
# problem statement asks whether synthetic tiles help a pathology classifier when paired data
# are scarce. It delivered neither. This chapter does both:
#
# 1. **RNA latents.** `rna_encoder` (a parameter of every model chapter, of `python -m
#    rna2histo train` and of `rna2histo.training.loop.fit`) conditions a generator on all normalised
#    genes through the study's MLP (`mlp`), on the top $k$ principal components of the training
#    patients' profiles (`pca`), or on the posterior mean of a beta-VAE trained on those profiles
#    (`betavae`; linear output layer, loss $\lVert z - \hat z \rVert^2 + \beta\,\mathrm{KL}$).
#    Both latents are fitted on training patients only, frozen, and saved in every checkpoint,
#    so `python -m rna2histo generate` needs nothing but the run. We compare the three on the
#    models of `compare_models` (the hybrid in the smoke defaults, the cVAE in the demo profile,
#    the diffusion model and the hybrid in the thesis profile) with the measures of the model
#    chapters and the evaluation chapter.
# 2. **Downstream utility.** From one real tile, predict a patient-level label derived from
#    RNA: immune-high vs immune-low by the median immune-program score of the training patients
#    (on a simulated cohort also the true immune-program level). A small CNN is trained on the
#    real tiles of 25% and 100% of the training patients (the thesis profile also 10% and
#    50%), alone and with tiles each
#    generator made from RNA: of the same patients, or of the *other* training patients, whose
#    slides we hide (the use case of RNA without slides). Every classifier is scored on the real
#    test tiles (ROC AUC, 95% interval over test patients), and each generator also trains a
#    classifier on its tiles alone (train on synthetic, test on real: TSTR).

# %% tags=["parameters"]
cohort_dir = "data/cohorts/smoke"  # the cohort the model chapters trained on
image_size = 64  # tile side in pixels; must match the cohort
runs = {  # model -> the model chapter's run: the generators of the downstream experiment
    "cgan": "runs/cgan/smoke",
    "cvae": "runs/cvae/smoke",
    "diffusion": "runs/diffusion/smoke",
    "hybrid": "runs/hybrid/smoke",
}
params_dir = ""  # parameters of the model chapters: empty for their defaults, else a profile folder (params/demo)
compare_models = ["hybrid"]  # models trained once per RNA encoder (demo: cvae; thesis: diffusion and hybrid)
rna_encoders = ["mlp", "pca", "betavae"]  # the encoders compared
rna_latent = 200  # latent dimensions of pca and betavae (pca: at most training patients - 1)
rna_beta = 1.0  # the beta-VAE's KL weight
comparison_dir = "runs/encoders/smoke"  # runs of the comparison that the chapters did not train
comparison_epochs = 5  # epochs of every comparison run; 0: its chapter's (whose own run is then reused)
n_per_patient = 7  # generated tiles per test patient for the faithfulness measures
tasks = ["rna"]  # labels: "rna" (immune score from RNA), "truth" (simulated cohorts only; demo, thesis: both)
fractions = [0.25, 1.0]  # shares of training patients whose slides the classifier sees (thesis: 0.1, 0.25, 0.5, 1)
synthetic_per_patient = 0  # generated tiles per training patient; 0: as many as real tiles
sample_steps = 4  # DDIM steps of the diffusion model's tiles and conditioning check here (its default: 50)
classifier_steps = 40  # optimisation steps of every classifier, whatever its pool size
classifier_batch = 32  # tiles per classifier step
n_boot = 1000  # bootstrap resamples of the test patients
seed = 0  # seeds the latents, generation, patient subsets, classifiers and bootstrap
device = "auto"  # "auto" picks cuda, then mps, then cpu

# %% tags=[]
# refuses a parameter papermill only warns of, and shows the values this chapter runs with
from rna2histo.book.parameters import check_parameters

params = check_parameters("06_downstream")

# %% tags=[]
import pandas as pd

from rna2histo.book import plots
from rna2histo.book.runner import ensure_cohort
from rna2histo.data.latent import fit_latent, reconstruction_report
from rna2histo.data.rna import fit_on_training
from rna2histo.evaluation import protocol, report
from rna2histo.evaluation.condition import condition_report
from rna2histo.experiments import downstream, encoder_comparison
from rna2histo.training.step import pick_device

# %% tags=[]
cohort = ensure_cohort(cohort_dir, image_size)
normaliser = fit_on_training(cohort)
splits = {s: normaliser.transform(cohort.rna.loc[cohort.patients(s)])[0] for s in ("train", "val", "test")}
print({s: len(z) for s, z in splits.items()}, "patients;", normaliser.n_genes, "genes")

# %% [markdown] tags=[]
# ## Part 1: RNA latents
# ### What each latent keeps
# Both latents reconstruct a profile, so both are judged the same way, per split: the mean
# squared reconstruction error per gene (z-score units) and the share of variance kept,
# $1 - \sum \lVert z - \hat z \rVert^2 / \sum \lVert z - \bar z_{train} \rVert^2$. On the
# training patients PCA keeps what its components explain; on held-out patients only what
# generalises. A PCA cannot have more components than training patients minus one.

# %% tags=["nbval-ignore-output"]
latents = {kind: fit_latent(kind, cohort, normaliser, dim=rna_latent, beta=rna_beta, seed=seed)
           for kind in ("pca", "betavae")}
pd.concat({kind: reconstruction_report(latent, splits, splits["train"]) for kind, latent in latents.items()}).round(3)

# %% [markdown] tags=[]
# The beta-VAE's training (the weights with the best validation loss are kept):

# %% tags=["nbval-ignore-output"]
history = pd.DataFrame(latents["betavae"].settings["history"]).set_index("step")
history[["train_loss", "val_loss"]].plot(logy=True, figsize=(5, 2.6), title="beta-VAE loss");
{k: v for k, v in latents["betavae"].settings.items() if k != "history"}

# %% [markdown] tags=[]
# ### What each condition holds of the tissue
# Variance kept is not what a generator needs: it needs what the tiles show. For each condition
# (`rna2histo.evaluation.condition`) a ridge regression, fitted on the training patients, predicts
# the simulated cohort's *true* program levels and the re-prediction targets of chapter 05 on the
# test patients; the table gives the held-out $R^2$. `all genes` is what the RNA holds at all;
# `marker genes` a baseline that needs labels real RNA lacks. On the demo cohort the top 8
# principal components hold none of the programs (the simulation's nuisance biology and batches
# own them, as in real RNA) and 32 keep $R^2 \geq 0.7$ of each; a test keeps the demo profile there.

# %% tags=["nbval-ignore-output"]
encoders = {"pca 8": {"rna_encoder": "pca", "rna_latent": 8},
            f"pca {rna_latent}": {"rna_encoder": "pca", "rna_latent": rna_latent},
            f"betavae {rna_latent}": {"rna_encoder": "betavae", "rna_latent": rna_latent, "rna_beta": rna_beta}}
condition_report(cohort, encoders, seed=seed).round(3)

# %% [markdown] tags=[]
# ### Does a latent make the generator listen to the RNA?
# One run per encoder with every other parameter as its chapter has it (the chapter's own run
# is reused for the encoder it used; `comparison_epochs` shortens every run instead, as the smoke
# defaults do, and then the chapter's encoder is trained again at that budget). Measured per run: the conditioning ratio of the model
# chapters (the same noise with different patients' RNA, over gene-shuffled RNA) on training
# patients and on held-out patients, and the evaluation chapter's faithfulness measures on the
# test patients with 95% intervals. A model that memorised its training patients' profiles
# reacts to them (ratio well above 1 on train) but not to new patients (ratio near 1 held out).

# %% tags=["nbval-ignore-output"]
comparison_runs = encoder_comparison.comparison_runs(
    compare_models, rna_encoders, runs, comparison_dir, params_dir,
    rna_latent=rna_latent, rna_beta=rna_beta, epochs=comparison_epochs, device=device,
)

# %% tags=["nbval-ignore-output"]
settings = protocol.Settings(n_boot=n_boot, seed=seed, mpp=cohort.manifest.get("mpp"))
table, comparison_metrics = encoder_comparison.compare(
    comparison_runs, cohort, f"{comparison_dir}/evaluation", n=n_per_patient, settings=settings, seed=seed,
    sample_steps=sample_steps,
)
table.round(3)

# %% tags=["nbval-ignore-output"]
report.metric_bars(comparison_metrics, ("patient_morph_error", "conditioning_spearman", "retrieval_top1"));

# %% [markdown] tags=[]
# ## Part 2: downstream utility
# ### The labels
# The immune-program score of a profile is the mean z-score of its immune marker genes; a
# patient is immune-high (1) when the score exceeds the median over the training patients.
# On a simulated cohort the true immune-program level, thresholded the same way, is the label
# the RNA score approximates; how often they agree:

# %% tags=["nbval-ignore-output"]
labels = {"rna": downstream.rna_labels(cohort, normaliser)[0]}
if "truth" in tasks and cohort.patients_table is not None:
    labels["truth"] = downstream.truth_labels(cohort)[0]
summary = downstream.label_summary(cohort, labels).round(2)
for task in list(labels):
    problem = downstream.label_problem(cohort, labels[task])
    if problem:  # e.g. a handful of test patients that all share one label
        print(f"task {task} left out: {problem}")
        del labels[task]
summary

# %% [markdown] tags=[]
# ### The experiment
# Each generator draws its tiles once for every training patient (the diffusion model with
# `sample_steps` DDIM steps); each setting takes its slice. Every classifier runs the same
# number of steps from the same initialisation, so a setting differs from "real only" by its
# data alone. The number of classifiers trained:

# %% tags=["nbval-ignore-output"]
sources = {
    model: downstream.run_source(run_dir, cohort, device=str(pick_device(device)),
                                 **({"steps": sample_steps} if model == "diffusion" else {}))
    for model, run_dir in runs.items()
}
per_patient = synthetic_per_patient or None
train_kw = dict(steps=classifier_steps, batch_size=classifier_batch, device=str(pick_device(device)))
print(len(downstream.plan(cohort.patients("train"), labels["rna"], list(sources), fractions)), "classifiers per task;",
      "tasks:", ", ".join(labels))

# %% tags=["nbval-ignore-output"]
results = {
    task: downstream.utility_experiment(cohort, task_labels, sources, fractions, seed=seed, n_boot=n_boot,
                                        synthetic_per_patient=per_patient, **train_kw)
    for task, task_labels in labels.items()
}
columns = ["setting", "fraction", "real_patients", "real_tiles", "synthetic_tiles", "auc", "lo", "hi",
           "delta", "delta_lo", "delta_hi"]
pd.concat({task: r[columns] for task, r in results.items()}).round(3)

# %% [markdown] tags=[]
# ### AUC against the share of slides kept
# One line per setting (shaded: 95% interval over test patients); the squares on the right are
# the train-on-synthetic classifiers, which saw no real tile.

# %% tags=["nbval-ignore-output"]
for task, r in results.items():
    plots.auc_by_fraction(r, title=f"task: {task} label");

# %% [markdown] tags=[]
# ### Did synthetic tiles help?
# Each synthetic setting against "real only" at the same share of slides (TSTR against real
# only with every slide). A gain or loss is claimed only when the paired 95% interval of the
# AUC difference (both classifiers scored on the same resampled test patients) excludes 0.

# %% tags=["nbval-ignore-output"]
for task, r in results.items():
    found = downstream.findings(r)
    print(f"Task {task}: {downstream.overall(found)}")
    display(found[["setting", "fraction", "intervals", "paired"]])

# %% [markdown] tags=[]
# Every comparison in words, made from the numbers above:

# %% tags=["nbval-ignore-output"]
for task, r in results.items():
    print(f"-- task {task}")
    for sentence in downstream.findings(r)["finding"]:
        print(sentence)

# %% [markdown] tags=[]
# ## Reading the results
# - The latent comparison says whether compressing the RNA before the generator makes its
#   conditioning generalise to patients it never saw: compare the held-out conditioning ratio
#   and the faithfulness measures across encoders of the same model.
# - A generator can only help a classifier with what its tiles carry: if its tiles do not
#   change with the immune program (the evaluation chapter's conditioning Spearman), its tiles
#   add label noise, and TSTR sits near 0.5.
# - With few test patients the intervals are wide; "no detectable difference" is the honest
#   reading of an interval that includes 0, not "no difference".
