# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown] tags=[]
# # The conditional GAN
#
# ## Overview
# The first of the study's four generators is a conditional GAN (Mirza & Osindero, 2014). A
# generator $G$ maps noise $z \sim \mathcal{N}(0, I_{128})$ and the patient's RNA $c$ to a tile;
# a discriminator $D$ sees a tile and the same RNA and says whether the pair is real. Both play
#
# $$\min_G \max_D \; \mathbb{E}_{x, c}[\log D(x, c)] + \mathbb{E}_{z, c}[\log(1 - D(G(z, c), c))],$$
#
# trained with binary cross-entropy on logits and the study's one-sided label smoothing: real
# pairs are labelled 0.9 and fakes 0.1 for $D$, so that $D$ never becomes certain and its
# gradients to $G$ stay informative.
#
# **Architecture (the study).** The RNA is embedded by an MLP (genes $\to$ 2048 $\to$ 1024
# $\to$ 512). $G$ turns $[z, e]$ into a 4x4 map and up-samples it with four transposed
# convolutions (BatchNorm, LeakyReLU, Tanh output); the condition reaches every resolution (our
# reading of the study's "skip connections") through FiLM after each normalisation, so that
# batch statistics cannot wash it out. $D$ has four strided convolutions, flattens, joins the
# image features with the RNA embedding and outputs one logit; dropout 0.2. We add a projection
# term (Miyato & Koyama, 2018), $\langle \phi(x), W e \rangle$, to $D$'s logit: with
# concatenation alone the generator learned the right colour for a condition in only some
# seeds. Every layer of $D$ is spectrally normalised (Miyato et al., 2018): with the study's
# $\mathcal{N}(0, 0.02)$ initialisation and no normalisation in $D$, its signal shrank several-fold
# per layer and it still could not tell checkerboard fakes from real tiles after 1,200 demo steps
# (mean $P(\text{real})$ 0.53 on real, 0.46 on fake tiles). Adam with $\beta = (0.5, 0.999)$,
# learning rates $5 \cdot 10^{-5}$ for $G$ and $2 \cdot 10^{-4}$ for $D$, cosine annealing,
# batch 16, 50 epochs.
#
# **Beyond the study: a mode-seeking term** (Mao et al., 2019). A conditional generator tends
# to ignore $z$ and draw one tile per condition. With `w_diverse` $= \lambda > 0$, $G$ also
# minimises $\lambda \,/\, \big(\lVert G(z_1, c) - G(z_2, c) \rVert_1 / \lVert z_1 - z_2 \rVert_1\big)$,
# which keeps different noise giving different tiles. It is off by default (the study's loss).
#
# **Beyond the study: augmentation without colour jitter.** The study augments the training tiles
# with flips, 90-degree rotations, shifts *and* colour jitter (brightness, contrast, saturation
# $\pm$20%, hue $\pm$10%). A generator learns the distribution of the tiles it is shown,
# augmentations included (they "leak" into its samples; Karras et al., 2020). Flips, rotations
# and shifts give tissue as it could have been cut; the jitter gives stains no slide has (a 10%
# hue turn makes eosin orange), and our generators drew them: on the demo cohort the cGAN's
# blotches were partly orange under the study's augmentation and pink and purple, the colours of
# the real tiles, with `augment = "geometric"` (the same augmentation without the jitter). The
# default, `"study"`, is the study's; the demo profile uses `"geometric"` for every generator.
#
# **Beyond the study: augmenting what $D$ sees** (DiffAugment; Zhao et al., 2020). With little
# data a discriminator learns the training images themselves and its gradient stops telling $G$
# about the distribution; the demo cohort has 700 training tiles. `d_augment` applies random, differentiable transforms to *every* image $D$
# judges, real and generated, in both players' steps: `"translation"` (a shift by up to 1/8 of
# the side, zero-filled), `"cutout"` (a zeroed square of half the side), `"color"` (brightness,
# saturation, contrast). $G$ is never shown augmented tiles, so unlike the training augmentation
# above nothing leaks into its samples. Off (`"none"`) by default, the study's. On the demo cohort
# `"translation,cutout"` gave lumens, stroma and nucleus-dark clusters where $G$ drew blotches
# without it, and the samples' colour, contrast and texture came closer to the real tiles'
# (validation statistics error 0.070 -> 0.059 after 40 epochs); adding `"color"` made them
# darker and speckled (0.087). The demo profile's comments have the measurements. Transposed convolutions still painted a checkerboard over them, so the
# demo profile also up-samples by resizing (`upsample = "resize"`, nearest-neighbour x2 and a
# 3x3 convolution; Odena et al., 2016).
#
# **Beyond the study: a judge of patches, and a game with margins.** Two options of $D$, off by
# default. With `d_patch` $= k$, $D$ also gives a logit for every position of its $k$-th feature
# map, each judging only that position's receptive field (22 px for $k = 3$), with the same
# projection on the RNA (PatchGAN; Isola et al., 2017); its loss is a second term, the mean over
# positions, added to the whole-tile one. The whole-tile logit reads $D$'s last 4x4 map and told
# $G$ little about nuclei, 10-12 px across on the demo tiles. `loss = "hinge"` replaces the
# smoothed BCE by $L_D = \mathbb{E}[\max(0, 1 - D(x, c))] + \mathbb{E}[\max(0, 1 + D(G(z, c), c))]$,
# $L_G = -\mathbb{E}[D(G(z, c), c)]$ (Lim & Ye, 2017; Miyato et al., 2018). On the demo cohort,
# `d_patch = 3` with batch 8 (twice the steps per epoch) made the nuclei that chapter 05's
# segmentation finds in the generated tiles larger, closer to the real tiles' mean area of
# 82 px$^2$: 78 and 55 px$^2$ in two runs of the demo profile (one and two CPU threads, which
# change the order of the arithmetic; one run without both: 40), with the statistics error at
# 0.055 and 0.058 (without: 0.064). The spread between the two runs is as large as the effect of
# either change alone, so read these as one seed's measurements. The demo profile uses both; its
# comments have the measurements. The hinge loss, tried with a wider $G$, drew a periodic grid
# and is not used there.
#
# **Beyond the study: a deeper generator, and longer training.** The cells of $G$'s first 4x4
# map are drawn by separate rows of its linear projection and meet only through the up-sampling
# convolutions: at 64 px a change to one cell reaches 31 px of the tile (a test measures it), and
# their borders showed as a grid of 16 px blocks. With `g_depth` $= 2$ every size, from 4x4 up,
# gets a second 3x3 convolution (reach 61 px). More than architecture, the demo generator was
# short of training: with the demo profile it drew blotches and purple speckle at 40 epochs and
# round nuclei with outlines and chromatin from about 80. Longer is not more faithful, though:
# the demo profile trains 30 epochs, whose tiles recovered 0.93-0.94x the held-out
# re-prediction ceiling for two seeds, against 0.81-0.89x after 40. It keeps `g_depth = 2`: at
# the study's depth a 120-epoch run drew nucleus outlines among dark square blocks; with it,
# round nuclei and no blocks, for 26% more time. The profile's comments have the measurements.

# %% tags=["parameters"]
cohort_dir = "data/cohorts/smoke"  # the cohort; built from the embedded default if missing
run_dir = "runs/cgan/smoke"  # checkpoints, metrics.csv and sample grids go here
epochs = 30  # passes over the training tiles (the study: 50)
batch_size = 8  # tiles per step (the study: 16)
z_dim = 64  # noise dimension (the study: 128)
lr_g = 2e-4  # generator learning rate (the study: 5e-5, too slow for a CPU budget)
lr_d = 2e-4  # discriminator learning rate (the study: 2e-4)
w_diverse = 0.0  # weight of the mode-seeking term; 0 is the study's loss
upsample = "transposed"  # decoder up-sampling: "transposed" (the study) or "resize" (no checkerboard)
g_depth = 1  # convs per resolution in G: 1 (the study); 2 lets the cells of its first map mix
d_augment = "none"  # DiffAugment for D's inputs: "none" (the study) or a subset of "color,translation,cutout"
loss = "bce"  # the game: "bce" with smoothed labels (the study) or "hinge"
d_patch = 0  # 0: D judges whole tiles (the study); k: also each position of its k-th map
# beside these, the settings every model chapter shares (image_size, device, seed, rna_encoder, ...)
# are in `rna2histo.book.parameters.TRAINING`: the table below shows all; set any of them here too

# %% tags=[]
# refuses a parameter papermill only warns of, and shows the values this chapter runs with, then loads the cohort
from rna2histo.book.chapter import ModelChapter

cgan = ModelChapter("cgan")

# %% [markdown] tags=[]
# ## The architecture
# Parameter counts of our two presets next to the study's. The `thesis` preset is the study's
# architecture at its 16,383 genes and 128 px; `small` keeps the design at a width a laptop CPU
# trains in minutes. Most of $G$'s thesis parameters sit in the first RNA layer
# (16,383 x 2,048).

# %% tags=[]
cgan.architecture()

# %% [markdown] tags=[]
# ## Training
# One loop trains every model in this book (`rna2histo.training.loop.fit`): the model supplies its
# losses and optimisers, the loop does the rest — seeding, the device, mixed precision on
# CUDA, gradient clipping at 1.0, validation every epoch, `metrics.csv`, a fixed-noise sample
# grid for fixed validation patients, and checkpoints (`best`, `last` and every `ckpt_every`
# epochs) that `resume=True` continues from exactly. With `reprediction_tiles` $> 0$ (the demo
# profile) the loop also measures, every `ckpt_every` epochs and at the last, how much of the
# *validation* patients' RNA their generated tiles carry: that many tiles per patient go through
# the tile-to-RNA regressor of chapter 05 (trained once per cohort on the training patients' real
# tiles), and the Spearman between predicted and measured expression is logged as
# `val_reprediction` (the `reprediction` panel below) and picks the `best` checkpoint. It only
# selects; no loss sees it.

# %% tags=["nbval-ignore-output"]
cgan.train()

# %% [markdown] tags=[]
# ## Losses
# GAN losses do not fall to zero: $D$ and $G$ are opponents. Healthy training keeps
# $D$'s loss away from zero (it is not winning outright) and $G$'s loss bounded; `game` is
# their sum on held-out patients, near $3 \ln 2 \approx 2.1$ while neither side wins (twice
# that with `d_patch`: the patch verdicts add a second loss of the same kind). Because
# no GAN loss falls as the images improve, the validation `loss` is a weight-free
# tile-statistics error: colour means and spreads and texture (mean gradient at two scales) of
# each generated tile against a real tile of the same held-out patient. It does not see nuclei:
# in a 120-epoch run of the demo profile with `g_depth = 2` it was lowest at epoch 27, when $G$
# drew blotches, and higher at epochs 80-120, when it drew nuclei. So it does not choose the cGAN's `best`
# checkpoint: that is the last epoch, or, with `reprediction_tiles` $> 0$, the epoch of the highest
# held-out re-prediction (the other models keep their lowest validation loss, or the same).

# %% [markdown] tags=[]
# ## Real and generated tiles
# Validation patients (rows): real tiles on the left, tiles generated from the patient's RNA
# with the `best` checkpoint on the right.

# %% tags=[]
cgan.samples()

# %% [markdown] tags=[]
# ## Does it listen to the RNA?
# The same noise with different patients' RNA must give different tiles. We report the mean
# absolute pixel difference between patients, next to the same difference for *shuffled*
# profiles (each gene permuted across patients, which keeps every gene's distribution but
# breaks the co-expression of the programs). A generator that learned the programs reacts
# more to real profiles than to shuffled ones: a ratio clearly above 1.
#
# Both on (up to 30) patients the model never saw (val and test) and on (up to 15) training
# patients: with only tens of training patients, an MLP over thousands of genes can memorise
# each training profile and react to it, yet treat a new patient's profile like noise (ratio
# near 1 held out, well above 1 on train). A compact latent of the RNA (`rna_encoder="pca"`, chapter 06
# compares the encoders) gives the generator only what the programs share across patients.

# %% tags=["nbval-ignore-output"]
cgan.conditioning()

# %% [markdown] tags=[]
# ## Summary
# - The cGAN follows the study's design at two sizes; the thesis preset matches its parameter
#   counts closely.
# - One loop trains it with the study's optimisers and schedules and writes a run folder that
#   `generate` and the evaluation chapter read.
# - The conditioning check says whether the generator uses the RNA's programs, not just its
#   noise.
#
# ## What's next
# The conditional VAE replaces the adversary by a likelihood: it reconstructs tiles through a
# latent code and samples new ones from the prior.
