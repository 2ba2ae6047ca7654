"""Training: the one loop for every generator (`loop.fit`), the optimisation step it lends the
models (`step`), what a run is and when a finished one is reused or resumed (`identity`), the
GPU fast path (`fastpath`) and torchrun (`distributed`).

May import `data`, `nets`, `models`, `runs`, and `evaluation.reprediction` (the held-out check
that picks the best checkpoint); not `experiments`, `book` or `bench`.
"""

