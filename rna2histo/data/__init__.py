"""The cohort turned into training data: RNA normalisation fitted on the training patients
(`rna`), the compact RNA latents a generator may be conditioned on (`latent`: PCA, beta-VAE),
tile augmentation (`augment`) and the paired tile-RNA dataset (`dataset`).

May import `cohort` and the top-level errors, paths and markers; everything above imports it.
"""
