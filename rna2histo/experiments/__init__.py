"""Experiments beyond the study: downstream utility of synthetic tiles (`downstream`, with its
tile `classifier`), the RNA encoder comparison (`encoder_comparison`) and the diffusion model's
denoising ladder (`denoising`).

May import everything below it (data, models, generate, evaluation, training); not `book` or
`bench`.
"""
