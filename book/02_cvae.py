# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown] tags=[]
# # The conditional VAE
#
# ## Overview
# The conditional variational autoencoder (Sohn et al., 2015) learns a latent code $z$ for each
# tile given its patient's RNA $c$. An encoder $q_\phi(z \mid x, c)$ outputs a mean $\mu$ and a
# log-variance $\log \sigma^2$; a decoder $p_\theta(x \mid z, c)$ rebuilds the tile. Training
# maximises the evidence lower bound, here in the study's form
#
# $$\mathcal{L} = \underbrace{\lVert x - \hat{x}(z, c) \rVert_2^2}_{\text{reconstruction (MSE)}}
#   + \beta \, \underbrace{\mathrm{KL}\big(\mathcal{N}(\mu, \sigma^2) \,\|\, \mathcal{N}(0, I)\big)}_{\text{prior}},
# \qquad z = \mu + \sigma \odot \epsilon,\ \epsilon \sim \mathcal{N}(0, I),$$
#
# with both terms averaged per pixel value, so that $\beta = 2\sigma_x^2$ makes the loss a scaled
# negative ELBO with Gaussian pixel noise $\sigma_x$ at any image size. New tiles come from the
# prior: $z \sim \mathcal{N}(0, I)$, decoded with the patient's RNA.
#
# **Architecture (the study).** Encoder: four strided convolutions on the image, flattened and
# joined with the RNA embedding, to $\mu, \log\sigma^2 \in \mathbb{R}^{256}$. Decoder: $[z, e]$
# to a 4x4 map and four transposed convolutions to the tile, with the RNA entering every
# resolution after normalisation. Adam ($\beta = (0.9, 0.999)$, lr $10^{-4}$), the learning
# rate halved every 20 epochs, batch 16, 40 epochs.

# %% tags=["parameters"]
cohort_dir = "data/cohorts/smoke"  # the cohort; built from the embedded default if missing
run_dir = "runs/cvae/smoke"  # checkpoints, metrics.csv and sample grids go here
epochs = 30  # passes over the training tiles (the study: 40)
batch_size = 8  # tiles per step (the study: 16)
z_dim = 64  # latent dimension (the study: 256)
beta = 0.1  # KL weight per pixel value (2 sigma_x^2; 0.1 means sigma_x ~ 0.22)
lr = 1e-4  # Adam learning rate (the study: 1e-4)
upsample = "transposed"  # decoder up-sampling: "transposed" (the study) or "resize" (no checkerboard)
# beside these, the settings every model chapter shares (image_size, device, seed, rna_encoder, ...)
# are in `rna2histo.book.parameters.TRAINING`: the table below shows all; set any of them here too

# %% tags=[]
# refuses a parameter papermill only warns of, and shows the values this chapter runs with, then loads the cohort
from rna2histo.book.chapter import ModelChapter

cvae = ModelChapter("cvae")

# %% [markdown] tags=[]
# ## The architecture
# Our two presets next to the study's count. At the study's 16,383 genes the three-layer RNA
# MLP (16,383 x 2,048 first) holds about half of the parameters; the study's exact layer
# widths are not given, so the `thesis` preset matches its total within 10%.

# %% tags=[]
cvae.architecture()

# %% [markdown] tags=[]
# ## Training
# The shared loop (`rna2histo.training.loop.fit`) with the cVAE's single optimiser and step schedule.

# %% tags=["nbval-ignore-output"]
cvae.train()

# %% [markdown] tags=[]
# ## Losses
# The validation loss is the training objective on held-out patients, decoding $z = \mu$.
# Reconstruction falls steadily; the KL term rises as the encoder starts to use the latent.

# %% [markdown] tags=[]
# ## Real and generated tiles
# Validation patients (rows): real tiles on the left, tiles decoded from the prior with the
# patient's RNA on the right (`best` checkpoint). A VAE trained with a pixel MSE averages what
# it cannot predict, so its samples are smoother than real tissue: the study's high SSIM for
# the cVAE comes from this blur, not from realism.

# %% tags=[]
cvae.samples()

# %% [markdown] tags=[]
# ## Does it listen to the RNA?
# Mean absolute pixel difference between tiles decoded from the same $z$ with different
# patients' RNA, next to the same for gene-shuffled profiles (see the cGAN chapter).

# %% tags=["nbval-ignore-output"]
cvae.conditioning()

# %% [markdown] tags=[]
# ## Summary
# - The cVAE is the study's second model: a likelihood instead of an adversary, stable to
#   train, with smooth samples.
# - The decoder receives the RNA at every resolution; the prior gives the diversity.
#
# ## What's next
# The conditional diffusion model trades one decoder pass for many denoising steps, and with
# them the sharpness that the VAE lacks.
