# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown] tags=[]
# # The hybrid GAN-VAE
#
# ## Overview
# The study's own model joins the cVAE and the cGAN: a VAE encoder $q_\phi(z \mid x, c)$ with
# $z \in \mathbb{R}^{128}$, a GAN-style decoder $G(z, c)$, and a discriminator $D(x, c)$ that
# also returns its intermediate feature maps $D_l$. The generator side minimises
#
# $$\mathcal{L}_G = 1.0\, \mathcal{L}_{adv} + 10.0\, \lVert x - \hat{x} \rVert_1
#   + 5.0\, \mathrm{LPIPS}(x, \hat{x}) + 0.5\, \mathrm{KL}(q_\phi \,\|\, \mathcal{N}(0, I))
#   + 2.0 \sum_l \lVert D_l(x) - D_l(\hat{x}) \rVert_1 ,$$
#
# with $\hat{x} = G(z, c)$, $z \sim q_\phi(z \mid x, c)$; the adversarial term also covers
# tiles decoded from the prior, because those are what generation produces. $D$ is trained
# with the cGAN's smoothed BCE. Adam ($\beta = (0.5, 0.999)$), lr $5 \cdot 10^{-5}$ for the
# VAE side and $2 \cdot 10^{-4}$ for $D$, cosine annealing, batch 16, 60 epochs.
#
# The encoder is the cVAE's, the discriminator the cGAN's and the decoder the shared
# up-sampling stack: nothing is written twice.
#
# **The perceptual term needs pretrained weights.** LPIPS compares deep features of an ImageNet
# AlexNet, which the `lpips` package downloads on first use. `perceptual="auto"` uses LPIPS
# when the weights are on this machine and otherwise turns the term off and says so below;
# `"lpips"` demands them (`python -m rna2histo weights download`); `"none"` turns it off.
#
# **Beyond the study: a mode-seeking term on the prior's tiles** (Mao et al., 2019; the cGAN's,
# chapter 01). The reconstruction term pulls $G$ towards the tile each $z \sim q_\phi$ came from,
# and nothing asks tiles decoded from different prior draws $z' \sim \mathcal{N}(0, I)$ to
# differ: on the demo cohort the hybrid drew one layout per patient whatever the noise. With
# `w_diverse` $= \lambda > 0$, $G$ also minimises
# $\lambda \,/\, \big(\lVert G(z'_1, c) - G(z'_2, c) \rVert_1 / \lVert z'_1 - z'_2 \rVert_1\big)$.
# There, $\lambda = 0.3$ raised the mean difference between one patient's tiles from different
# noise from 0.12 to 0.33 (on the $[-1, 1]$ scale) and left the validation reconstruction no
# worse; $\lambda = 1$ washed the tiles out to white. Off by default, the study's loss.
#
# **The discriminator's options** are the cGAN's (chapter 01): `loss = "hinge"` and `d_patch`,
# a logit for every position of $D$'s `d_patch`-th feature map; the decoder takes the cGAN
# generator's `g_depth` (3x3 convs per resolution), and `w_recon` sets the weight of $L_1$. All
# are the study's here. The demo profile (`params/demo/04_hybrid.yaml`) trains 60 epochs at
# batch 8 with `d_patch = 3`, `g_depth = 2` and `w_recon = 3`: in single-seed runs on the demo
# cohort, the study's $L_1$ weight of 10 drew white blotches in pink, and a weight of 3 with the
# study's decoder a dense purple speckle; only with the patch logits and the deeper decoder as
# well did the hybrid draw separate nuclei. $L_1$ rewards the average of the tiles a $z$ could
# have come from, a blur; with LPIPS off, sharp structure has to come from the adversarial terms.
# The profile's comments hold every measurement.

# %% tags=["parameters"]
cohort_dir = "data/cohorts/smoke"  # the cohort; built from the embedded default if missing
run_dir = "runs/hybrid/smoke"  # checkpoints, metrics.csv and sample grids go here
epochs = 20  # passes over the training tiles (the study: 60)
batch_size = 8  # tiles per step (the study: 16)
perceptual = "auto"  # "auto", "lpips" (requires the AlexNet weights) or "none"
z_dim = 64  # latent dimension (the study: 128)
lr_g = 2e-4  # encoder and decoder learning rate (the study: 5e-5, too slow for a CPU budget)
lr_d = 2e-4  # discriminator learning rate (the study: 2e-4)
w_kl = 0.5  # weight of the KL term, per latent dimension (the study: 0.5)
w_recon = 10.0  # weight of the L1 reconstruction term (the study: 10)
upsample = "transposed"  # decoder up-sampling: "transposed" (the study) or "resize" (no checkerboard)
w_diverse = 0.0  # weight of the mode-seeking term on prior samples; 0 is the study's loss
loss = "bce"  # the game: "bce" with smoothed labels (the study) or "hinge"
d_patch = 0  # 0: D judges whole tiles (the study); k: also each position of its k-th map
g_depth = 1  # convs per resolution in the decoder: 1 (the study); 2 as in chapter 01
# beside these, the settings every model chapter shares (image_size, device, seed, rna_encoder, ...)
# are in `rna2histo.book.parameters.TRAINING`: the table below shows all; set any of them here too

# %% tags=[]
# refuses a parameter papermill only warns of, and shows the values this chapter runs with, then loads the cohort
from rna2histo.book.chapter import ModelChapter

hybrid = ModelChapter("hybrid")

# %% [markdown] tags=[]
# ## The architecture
# The study reports no parameter count for its hybrid; ours follows from the cVAE encoder, the
# cGAN decoder and discriminator at the study's sizes.

# %% tags=[]
hybrid.architecture()

# %% [markdown] tags=[]
# ## Training
# The shared loop (`rna2histo.training.loop.fit`) with two optimisers, the discriminator's step first.

# %% tags=["nbval-ignore-output"]
hybrid.train()

# %% [markdown] tags=[]
# ## Losses
# The validation loss is the VAE side's reconstruction objective on held-out patients
# (`w_recon` $L_1$ + `w_kl` KL, plus $5\,\mathrm{LPIPS}$ when on), decoding $z = \mu$; the
# adversarial terms are left out because they measure the opponent as much as the images.
# It keeps the `best` checkpoint. In the demo profile's chapter run it fell from 1.32 after the
# first epoch to between 0.82 and 1.12 from epoch 20 on, lowest at epoch 47, whose tiles looked
# like the last epoch's; $L_1$ on the training tiles stayed between 0.28 and 0.29 throughout.

# %% [markdown] tags=[]
# ## Real and generated tiles
# Validation patients (rows): real tiles on the left, tiles decoded from the prior with the
# patient's RNA on the right (`best` checkpoint).

# %% tags=[]
hybrid.samples()

# %% [markdown] tags=[]
# Whether this run had its perceptual term (it depends on the machine, so the tests do not
# compare this output):

# %% tags=["nbval-ignore-output"]
print(hybrid.perceptual_term())

# %% [markdown] tags=[]
# ## Does it listen to the RNA?
# Tiles from the same $z$ with different patients' RNA, next to gene-shuffled profiles (see the
# cGAN chapter).

# %% tags=["nbval-ignore-output"]
hybrid.conditioning()

# %% [markdown] tags=[]
# ## Summary
# - The hybrid reuses the cVAE encoder and the cGAN discriminator; its loss adds L1,
#   perceptual and feature-matching terms to the adversarial one.
# - Without the AlexNet weights the perceptual term is off, and the chapter says so.
# - On the demo cohort it drew separate nuclei only with a lighter $L_1$ term, patch logits and
#   a deeper decoder (the demo profile); its nuclei are still fewer and less regular than the
#   real ones.
#
# ## What's next
# The evaluation chapter compares the four models with the study's metrics, with uncertainty,
# and asks whether the generated tissue carries the biology of the RNA.
