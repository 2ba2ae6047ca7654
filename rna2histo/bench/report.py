"""The terminal reports of `bench` and `make bench-demo`."""

from __future__ import annotations


def format_report(r: dict) -> str:
    """The printed table: header, training, data, generation, cohort, epoch memory, targets."""
    s = r["settings"]
    n, precision = s["reference_size"], "bf16" if r["device_type"] == "cuda" else "fp32"
    header = (
        f"rna2histo bench on {r['device_type']}: {r['device']}; {r['threads']} threads "
        f"({r['cpu_count']} CPUs); torch {r['torch']}" + ("; quick" if r["quick"] else "")
    )
    reference = (
        f"reference: {precision} matmul {n}x{n}, median of {s['reference_repeats']} right after each "
        f"model's steps (column ref); over the run {r['reference_flops_per_s'] / 1e9:,.1f} GFLOP/s"
    )
    return "\n".join([
        header, reference, "", *_training_lines(r), "", *_data_lines(r), "",
        f"total {r['seconds']:.0f} s", "", *_target_lines(r["targets"], "targets (stated for a CPU)"),
    ])


def _training_lines(r: dict) -> list[str]:
    s = r["settings"]
    shapes = "; ".join(f"{p}: {size} px, {genes} genes" for p, (size, genes) in s["shapes"].items())
    title = (
        f"training step at batch {s['batch_size']} ({shapes}): median of the timed steps after "
        f"{1 + s['warmup_steps']} warm-up; FLOPs of one step (forward, backward, every optimiser)"
        f"{_fast_path_note(r)}"
    )
    columns = (
        f"{'model':<10}{'preset':<8}{'images/s':>10}{'ms/step':>10}{'GFLOP/step':>12}"
        f"{'ref GFLOP/s':>13}{'MFU':>7}{'steps':>7}  notes"
    )
    lines = [title, columns]
    for name, presets in r["models"].items():
        for preset, m in presets.items():
            if m["images_per_s"] is None:
                lines.append(f"{name:<10}{preset:<8}  skipped ({m['skipped']})")
                continue
            notes = ", ".join(f"{k} {v}" for k, v in m["notes"].items())
            lines.append(
                f"{name:<10}{preset:<8}{m['images_per_s']:>10.1f}{1000 * m['step_s']:>10.0f}"
                f"{m['flops_per_step'] / 1e9:>12.1f}{m['reference_flops_per_s'] / 1e9:>13.1f}"
                f"{m['mfu']:>7.3f}{m['steps']:>7}  {notes}"
            )
    return lines


def _data_lines(r: dict) -> list[str]:
    s, p, e = r["settings"], r["data_pipeline"], r["epoch"]
    size = s["shapes"][s["generation_preset"]][0]
    skipped = "skipped (quick)" if r["quick"] else "skipped"
    ms = "   ".join(f"{name} {skipped if v is None else f'{v:,.1f}'}"
                   for name, v in r["generation_ms_per_image"].items())
    patients, tiles, cohort_px, cohort_genes = s["cohort"]
    augment = "augmented" if s["epoch_augment"] else "not augmented (quick)"
    pipeline = (
        f"data pipeline (TileDataset + make_loader, augmented, batch {s['batch_size']}, {_loader_note(r)}, "
        f"{p['image_size']} px, {p['n_genes']} genes): {r['data_pipeline_images_per_s']:,.0f} images/s "
        f"= {r['data_pipeline_ratio']:.1f}x the fastest model ({p['fastest_model']}, "
        f"{p['fastest_images_per_s']:.1f} images/s); with 1 intra-op thread "
        f"{p['images_per_s_one_thread']:,.0f} images/s"
    )
    generation = (
        f"generation, ms per image ({s['generation_preset']} preset, {size} px, batch "
        f"{s['generation_batch']}, diffusion {s['ddim_steps']} DDIM steps): {ms}"
    )
    cohort = (
        f"cohort build (build_synthetic, {patients} patients x {tiles} tiles, {cohort_px} px, "
        f"{cohort_genes} genes): {r['cohort_tiles_per_s']:.1f} tiles/s"
    )
    epoch = (
        f"epoch memory ({e['tiles']:,} random tiles at {s['epoch_image_size']} px written by "
        f"CohortWriter, as the synthetic builder is too slow for so many; memory-mapped uint8; "
        f"{augment}; a fresh process with 1 intra-op thread): peak RSS {e['increase_gb']:.2f} GB above "
        f"the RSS at the epoch's start "
        f"(process peak {e['peak_rss_gb']:.2f} GB; before -> after the epoch, file-backed "
        f"{_gb(e['rss_file_before_gb'])} -> {_gb(e['rss_file_after_gb'])}, anonymous "
        f"{_gb(e['rss_anon_before_gb'])} -> {_gb(e['rss_anon_after_gb'])}); "
        f"{e['images_per_s']:,.0f} images/s"
    )
    return [pipeline, generation, cohort, epoch]


def _fast_path_note(r: dict) -> str:
    """The fast path's switches the steps ran with (none on a CPU), for the training title."""
    fast = r.get("fast_path", {})  # absent in results saved before the fast path
    on = [k for k in ("channels_last", "fused", "cudnn_benchmark", "compile") if fast.get(k)]
    return f"; fast path: {', '.join(on)}" if on else ""


def _loader_note(r: dict) -> str:
    fast = r.get("fast_path", {})
    return f"workers {fast.get('workers', 0)}" + (", pinned memory" if fast.get("pin_memory") else "")


def _gb(value) -> str:
    return "?" if value is None else f"{value:.2f} GB"


def _target_lines(rows: list[dict], title: str) -> list[str]:
    lines = [title]
    for row in rows:
        if row["met"] is None:
            verdict, value = "not measured", "-"
        else:
            verdict, value = ("met" if row["met"] else "not met"), f"{row['value']:.2f}{row['unit']}"
        why = f": {row['why']}" if row["met"] is None and row.get("why") else ""
        lines.append(f"  {row['target']:<40}{value:>10}  {verdict}{why}")
    return lines


def format_book_report(r: dict) -> str:
    """Wall time and peak memory of the book run, against its targets."""
    memory = (
        f"  wall time {r['wall_s']:.0f} s; peak memory {r['peak_tree_pss_gb']:.2f} GB (PSS summed "
        f"over the process tree, sampled every {r['interval_s']:g} s; RSS sum "
        f"{r['peak_tree_rss_gb']:.2f} GB; largest single process {r['largest_process_rss_gb']:.2f} GB)"
    )
    command = " ".join(r["command"][1:])
    chapters = "  per chapter (papermill's cell durations): " + ", ".join(
        f"{stem} {seconds:.0f} s" for stem, seconds in r["chapter_seconds"].items())
    header = f"make bench-demo: {command} on {r['device']}; started {r['started']}"
    return "\n".join([header, memory, chapters, *_target_lines(r["targets"], "targets")])
