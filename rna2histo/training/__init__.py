"""Training: the one loop for every generator (`loop.fit`), the optimisation step it lends the
models (`step`), what a run is and when a finished one is reused or resumed (`identity`), the
GPU fast path (`fastpath`), torchrun (`distributed`) and the cohort's tile autoencoder
(`autoencoder`: trained once per cohort, frozen inside a latent diffusion model).

May import `data`, `nets`, `models`, `runs`, and `evaluation.reprediction` (the held-out check
that picks the best checkpoint); not `experiments`, `book` or `bench`.
"""

