# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown] tags=[]
# # Conditional diffusion
#
# ## Overview
# A denoising diffusion model (Ho et al., 2020) destroys a tile $x_0$ with Gaussian noise over
# $T = 1000$ steps and learns to undo it. With the study's linear schedule
# $\beta_t \in [10^{-4}, 0.02]$ and $\bar\alpha_t = \prod_{s \le t} (1 - \beta_s)$,
#
# $$q(x_t \mid x_0) = \mathcal{N}\big(\sqrt{\bar\alpha_t}\, x_0,\ (1 - \bar\alpha_t) I\big),
# \qquad \mathcal{L} = \mathbb{E}_{x_0, c, t, \epsilon} \big\lVert \epsilon - \epsilon_\theta(x_t, t, c) \big\rVert^2 .$$
#
# Sampling uses DDIM (Song et al., 2021) with 50 steps and $\eta = 0$: deterministic given the
# starting noise, so fixed noise gives comparable grids. Weights for sampling are an
# exponential moving average (EMA) of the trained ones.
#
# **Beyond the study: classifier-free guidance** (Ho & Salimans, 2022). During training the RNA
# embedding is replaced by a learned null embedding with probability `cond_dropout`, so one
# network also learns $\epsilon_\theta(x_t, t, \varnothing)$. At sampling,
# $\hat\epsilon = \epsilon_\theta(x_t, t, \varnothing) + s\,(\epsilon_\theta(x_t, t, c) - \epsilon_\theta(x_t, t, \varnothing))$;
# $s = 1$ is the plain conditional model of the study, $s > 1$ trades diversity for fidelity
# to the RNA.
#
# **Beyond the study: v-prediction** (Salimans & Ho, 2022), for short runs. Sampling needs
# $\hat x_0 = (x_t - \sqrt{1 - \bar\alpha_t}\,\hat\epsilon) / \sqrt{\bar\alpha_t}$, which at
# $t = 999$ multiplies the error of $\hat\epsilon$ by about 150: a noise predictor trained for
# minutes draws coloured noise. With `prediction = "v"` the U-Net outputs
# $v = \sqrt{\bar\alpha_t}\,\epsilon - \sqrt{1 - \bar\alpha_t}\,x_0$ and is trained on
# $\lVert v - v_\theta \rVert^2$; then $\hat x_0 = \sqrt{\bar\alpha_t}\,x_t - \sqrt{1 - \bar\alpha_t}\,\hat v$
# amplifies nothing, and $\hat\epsilon = \sqrt{\bar\alpha_t}\,\hat v + \sqrt{1 - \bar\alpha_t}\,x_t$
# feeds the same DDIM sampler. The default, `"eps"`, is the study's; the demo profile uses `"v"`.
#
# **Beyond the study: latent diffusion** (Rombach et al., 2022), for a CPU. With
# `latent_channels` $k > 0$ the process runs not on the pixels but on the latents of a tile
# autoencoder ($64 \times 64 \times 3 \to 32 \times 32 \times k$, one halving), trained once
# per cohort on the training patients' real tiles (L1 on the pixels and on their Laplacian,
# `rna2histo.training.autoencoder`), cached beside the cohort and frozen inside the model; the
# latents are scaled to unit variance and `sample` decodes them. The U-Net sees a quarter of the
# positions: here a training step took 1/1.7 of a pixel step, and sampling (the held-out check
# every few epochs, chapter 05's tiles) about a third of the time. With `latent_noise` the decoder
# learns from latents with added noise, so that it also draws tissue from the sampler's latents,
# which never lie exactly on the encoder's. The demo profile uses $k = 4$ and noise 0.1: on the
# held-out patients they drew tiles with more of the RNA's morphometry and a smaller morph FD
# than the pixel model at equal re-prediction (`benchmarks/experiments.md`, 2026-12-07 latent
# diffusion). The default, 0, is the study's pixel model.
#
# **Architecture (the study).** A U-Net with skip connections, base 64 channels up to 256 at
# the bottleneck, a 128-d sinusoidal time embedding and an RNA embedding MLP (genes $\to$ 512
# $\to$ 256); time and RNA condition every residual block (FiLM after GroupNorm). AdamW
# (lr $10^{-4}$, weight decay 0.01), cosine schedule, batch 8, 50 epochs. The study reports
# only that its U-Net has more than 15M parameters.

# %% tags=["parameters"]
cohort_dir = "data/cohorts/smoke"  # the cohort; built from the embedded default if missing
run_dir = "runs/diffusion/smoke"  # checkpoints, metrics.csv and sample grids go here
epochs = 4  # passes over the training tiles (the study: 50)
batch_size = 8  # tiles per step (the study: 8)
sample_steps = 5  # DDIM steps for sample grids and generation (the study: 50)
guidance = 1.0  # classifier-free guidance scale s; 1 is plain conditional sampling (the study)
cond_dropout = 0.1  # probability of training without the RNA (enables guidance)
lr = 1e-4  # AdamW learning rate (the study: 1e-4)
prediction = "eps"  # what the U-Net outputs: "eps", the noise (the study), or "v" (see the objective)
latent_channels = 0  # 0: diffusion on the pixels (the study); k > 0: on the k-channel latents of the cohort's tile autoencoder
latent_noise = 0.0  # noise (x the latents' deviation) the autoencoder's decoder learns from; with latent_channels > 0
# beside these, the settings every model chapter shares (image_size, device, seed, rna_encoder, ...)
# are in `rna2histo.book.parameters.TRAINING`: the table below shows all; set any of them here too

# %% tags=[]
# refuses a parameter papermill only warns of, and shows the values this chapter runs with, then loads the cohort
from rna2histo.book.chapter import ModelChapter

diffusion = ModelChapter("diffusion")

# %% [markdown] tags=[]
# ## The architecture
# The trained parameters of our two presets (the EMA copy is not counted). The study gives a
# lower bound only ("more than 15M" for the U-Net): the `thesis` U-Net, four levels of 64,
# 128, 128 and 256 channels with two residual blocks each, has 17.6M.

# %% tags=[]
diffusion.architecture()

# %% [markdown] tags=[]
# ## Training
# The shared loop (`rna2histo.training.loop.fit`); the model updates its EMA after every step and
# uses it for validation and sampling.

# %% tags=["nbval-ignore-output"]
diffusion.train()

# %% [markdown] tags=[]
# ## Losses
# The validation loss is the training objective ($\epsilon$-MSE, or $v$-MSE with
# `prediction = "v"`) of the EMA weights at fixed, seeded timesteps and noise, so epochs are
# comparable. It is averaged over all $t$. For $\epsilon$ most of it comes from small $t$, where
# the noise is hard to tell from texture; a small $\epsilon$-MSE at large $t$ can still mean
# noisy samples (the amplification above), which is why the samples below are the judge.

# %% [markdown] tags=[]
# ## Real and generated tiles
# Validation patients (rows): real tiles on the left, DDIM samples from the patient's RNA on
# the right (`best` checkpoint, EMA weights). Diffusion needs far more steps than the GANs to
# leave the noise: a smoke run of seconds shows the mechanics, the demo and thesis profiles
# show the model.

# %% tags=[]
diffusion.samples()

# %% [markdown] tags=[]
# ## Does it listen to the RNA?
# The same starting noise with different patients' RNA (DDIM with $\eta = 0$ is deterministic
# given the noise), next to gene-shuffled profiles (see the cGAN chapter).

# %% tags=["nbval-ignore-output"]
diffusion.conditioning()

# %% [markdown] tags=[]
# ## Where does the grain come from?
# Short runs draw grainy tiles. The sampler (few DDIM steps) or the denoiser (noise it has not
# learnt to remove)? We noise real validation tiles to $x_t$ and run the same sampler back from
# there (`Diffusion.denoise`, as in SDEdit, Meng et al. 2022): up to level $t$ the tile's own
# structure is given. Rows: the real tiles, the results from each $t$ (the noise's scale against
# the signal's, $\sqrt{(1 - \bar\alpha_t) / \bar\alpha_t}$, in the table), then samples from
# pure noise with the same seed (so they match the row from $t = 999$ closely). The table gives
# the RMSE to the tile (grey levels) and the high-frequency ratios to the real tiles
# (`rna2histo.experiments.denoising`): luma measures detail and blur, chroma measures colour speckle, to
# which real H&E, with its smooth colour, gives little.
#
# On the demo profile at 10 epochs (2026-12-03) the tiles came back clean from $t = 50$ (noise
# 0.18 of the signal; chroma ratio 0.96), speckled from $t = 150$ (0.52; 1.18) and as grainy as
# the samples from $t = 300$ (1.24; 1.44): the denoiser had not learnt the middle noise levels,
# and more sampling steps could not help (100 steps and $\eta = 1$ gave the same grain). At 25
# epochs the speckle had gone but every level above $t = 150$ came back as purple blobs without
# nuclei; at 60 epochs, the demo profile now, rimmed nuclei come back from $t = 150$ and the
# samples from pure noise draw them too (`params/demo/03_diffusion.yaml` has the runs).

# %% tags=["nbval-ignore-output"]
diffusion.denoising()

# %% [markdown] tags=[]
# ## Summary
# - DDPM training, DDIM sampling with EMA weights, and classifier-free guidance with $s = 1$
#   reproducing the study's plain conditional sampling.
# - `prediction = "v"` trades the study's noise target for one whose errors the sampler does
#   not amplify: the demo profile's choice for a few CPU minutes.
# - Sampling costs `sample_steps` network passes per tile (twice that with $s \neq 1$).
# - Denoising real tiles from each noise level tells a denoiser that has not learnt a level
#   apart from a sampler that is too coarse.
# - On a CPU what the small model needed was training time: at equal wall time a twice-wider
#   U-Net did no better, and the 60-epoch run drew nuclei by epoch 41 (not yet at epoch 24).
#
# ## What's next
# The study's own model, the hybrid GAN-VAE, combines the VAE's encoder with an adversary and
# a perceptual loss.
