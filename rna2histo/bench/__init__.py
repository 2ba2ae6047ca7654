"""How fast and how big: training throughput and FLOP utilisation, data, generation, memory.

``python -m rna2histo bench`` measures, in one run on one device:

- a reference rate R in FLOP/s: a square matmul (fp32 on a CPU, bf16 on CUDA), median of repeats,
  measured again right after each model's steps, so that a machine whose load drifts during the
  run slows the step and its reference alike;
- per model and preset, the training step exactly as the loop runs it (the model's own
  ``training_step`` through a real `rna2histo.training.step.Step`, then ``on_step_end``, with the loop's
  default fast path, `rna2histo.training.fastpath`: on CUDA channels_last, fused optimisers and cuDNN
  benchmark mode, on a CPU fused Adam alone) on a fixed random batch: images/s and the model FLOP
  utilisation

      MFU = F / t / R,   F = FLOPs of one step, t = median seconds per step,

  with F counted by `torch.utils.flop_counter.FlopCounterMode` over the first full step (every
  forward, backward and optimiser the step runs). It counts matmuls and convolutions, not
  elementwise work, so MFU says how close the step comes to the device's matmul rate;
- the data pipeline (`TileDataset` + `make_loader`, augmented) against the fastest model's appetite;
- generation in ms per image, the synthetic cohort build rate, and how far one epoch over a
  20,000-tile 128 px cohort raises the peak RSS above the RSS at its start, iterated in a fresh
  interpreter so that earlier allocations of this process do not hide it. The tiles stay
  memory-mapped: what the epoch adds are the file's pages, which the kernel can reclaim.

Ratios (MFU, pipeline / model) come from one run, so a busy machine lowers the absolute numbers
more than the ratios. `whole_book.measure_book` times the whole book (``make bench-demo``).

Where each part lives: the instruments and the model measures in `measure`, the data side in
`pipeline`, one run and its targets in `suite`, the whole book in `whole_book`, the terminal
reports in `report`. The top layer of the package: it may import anything below it.
"""
