"""The command line: ``python -m rna2histo <command> ...``.

Every command is a thin wrapper over a module function a chapter can call too. Relative paths
are taken from the working directory here (chapters take them from the repository root). Bad input ends
with one line on stderr (``error: <where>: <what>``) and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import UserError
from .settings import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, Range, number_error


def resolve(path) -> Path:
    """On the command line, relative paths are the shell's: relative to the working directory."""
    return Path(path).expanduser().resolve()


def _number(kind, allowed: Range):
    """An argparse type: a `kind` (int or float), finite, in `allowed`; refused as the settings are."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = text  # refused below as "expected a whole number ..., got '1.5'"
        error = number_error("value", value, kind, allowed)
        if error:
            raise argparse.ArgumentTypeError(error.removeprefix("value: "))
        return value

    return parse


COUNT = _number(int, AT_LEAST_ONE)  # how many of something
INDEX = _number(int, NON_NEGATIVE)  # a seed
SCALE = _number(float, POSITIVE)  # a factor or size


def _cohort_commands(sub) -> None:
    cohort = sub.add_parser("cohort", help="build or inspect a cohort").add_subparsers(
        dest="source", required=True
    )
    syn = cohort.add_parser("synthetic", help="the simulated paired cohort (embedded default)")
    syn.add_argument("--out", required=True, help="cohort folder to write")
    syn.add_argument("--patients", type=COUNT, default=40)
    syn.add_argument("--tiles-per-patient", type=COUNT, default=24)
    syn.add_argument("--image-size", type=COUNT, default=64)
    syn.add_argument("--seed", type=INDEX, default=0)
    syn.add_argument("--genes", type=COUNT, default=2000)
    syn.set_defaults(run=_run_synthetic)

    fol = cohort.add_parser("folder", help="bring your own: an RNA table and a folder of images")
    fol.add_argument("--rna", required=True, help="CSV, TSV or parquet; patients as rows")
    fol.add_argument("--images", required=True, help="folder with one sub-folder per patient")
    fol.add_argument("--out", required=True, help="cohort folder to write")
    fol.add_argument("--tile-size", type=COUNT, default=256)
    fol.add_argument("--image-size", type=COUNT, default=128)
    fol.add_argument("--scale", type=SCALE, default=1.0, help="resample images by this first")
    fol.add_argument("--seed", type=INDEX, default=0, help="seed of the patient split")
    fol.add_argument("--max-pixels", type=COUNT, default=None,
                     help="skip larger images, before and after --scale (default 100000000)")
    fol.set_defaults(run=_run_folder)

    tcga = cohort.add_parser(
        "tcga",
        help="TCGA RNA (UCSC Xena) and diagnostic slides (GDC): downloads, tiles, resumes",
        description="Build a cohort from a TCGA project: RNA-seq from UCSC Xena (primary tumours, "
        "one profile per patient) and one open diagnostic H&E slide per patient from the GDC, tiled "
        "at 20x with OpenSlide. Downloads resume (HTTP Range) and are md5-checked; re-running after "
        "an interruption redoes only unfinished slides. Needs the network, and disk for the cache: "
        "every downloaded slide by default, about one slide per worker with --no-keep-slides.",
    )
    tcga.add_argument("--project", default="TCGA-LUAD")
    tcga.add_argument("--out", required=True, help="cohort folder to write")
    tcga.add_argument("--max-patients", type=COUNT, default=None, help="seeded subset of patients")
    tcga.add_argument("--tiles-per-patient", type=COUNT, default=64)
    tcga.add_argument("--tile-size", type=COUNT, default=256, help="tile side in pixels at 20x")
    tcga.add_argument("--image-size", type=COUNT, default=128, help="tile side after resizing")
    tcga.add_argument("--workers", type=COUNT, default=2, help="slides processed in parallel")
    tcga.add_argument("--keep-slides", action=argparse.BooleanOptionalAction, default=True,
                      help="keep downloaded slides in the cache (default) or delete each once tiled")
    tcga.add_argument("--cache", default=None, help="downloads and per-slide records (default: OUT-cache)")
    tcga.add_argument("--xena-url", default=None, help="the RNA matrix (default: the project's HiSeqV2 on the public Xena hub)")
    tcga.add_argument("--gdc-api", default=None, help="the GDC API (default: the public service)")
    tcga.add_argument("--seed", type=INDEX, default=0, help="seeds patient selection, tile sampling, split")
    tcga.set_defaults(run=_run_tcga)

    info = cohort.add_parser("info", help="summarise a cohort folder")
    info.add_argument("dir")
    info.set_defaults(run=_run_info)


def _run_tcga(args) -> None:
    from .cohort import gdc, load_cohort
    from .cohort.tcga import build_tcga

    out = build_tcga(
        resolve(args.out),
        project=args.project,
        max_patients=args.max_patients,
        tiles_per_patient=args.tiles_per_patient,
        tile_size=args.tile_size,
        image_size=args.image_size,
        workers=args.workers,
        keep_slides=args.keep_slides,
        cache=resolve(args.cache) if args.cache else None,
        xena_url=args.xena_url,
        gdc_api=args.gdc_api or gdc.GDC_API,
        seed=args.seed,
    )
    _run_info(argparse.Namespace(dir=out))
    report = load_cohort(out, check_splits=False).manifest["report"]
    for kind in ("slides_unreadable", "slides_failed"):
        for name, why in report[kind]["items"].items():
            print(f"{kind.split('_')[1]}: {name}: {why}", file=sys.stderr)
    if report["slides_failed"]["count"]:
        print("run the same command again to retry the failed downloads", file=sys.stderr)


def _run_synthetic(args) -> None:
    from .cohort.synthetic import build_synthetic

    out = build_synthetic(
        resolve(args.out),
        patients=args.patients,
        tiles_per_patient=args.tiles_per_patient,
        image_size=args.image_size,
        seed=args.seed,
        genes=args.genes,
        progress=True,
    )
    _run_info(argparse.Namespace(dir=out))


def _run_folder(args) -> None:
    from .cohort.folder import build_folder

    out = build_folder(
        resolve(args.rna),
        resolve(args.images),
        resolve(args.out),
        tile_size=args.tile_size,
        image_size=args.image_size,
        scale=args.scale,
        seed=args.seed,
        progress=True,
        max_pixels=args.max_pixels,
    )
    _run_info(argparse.Namespace(dir=out))


def _run_info(args) -> None:
    from .cohort import describe, load_cohort

    print(describe(load_cohort(resolve(args.dir), check_splits=False)))


def _book_command(sub) -> None:
    book = sub.add_parser("book", help="run every chapter with a profile and build the HTML book")
    book.add_argument("--profile", default="demo", help="folder under params/ (default: demo)")
    book.set_defaults(run=_run_book)


def _run_book(args) -> None:
    from .book.runner import build

    build(args.profile)


def _generate_command(sub) -> None:
    gen = sub.add_parser("generate", help="tiles from a trained run for new RNA profiles")
    gen.add_argument("--run", dest="run_dir", required=True, help="run folder, e.g. runs/hybrid/default")
    gen.add_argument("--rna", required=True, help="CSV, TSV or parquet; one row per patient")
    gen.add_argument("--n", type=COUNT, default=7, help="tiles per profile (default 7, as in the study)")
    gen.add_argument("--out", required=True, help="folder for the PNG tiles and index.csv")
    gen.add_argument("--seed", type=INDEX, default=0)
    gen.add_argument("--guidance", type=_number(float, NON_NEGATIVE), default=None, help="diffusion: guidance scale")
    gen.add_argument("--checkpoint", default="best", help="best, last or epoch_NNN")
    gen.add_argument("--overwrite", action="store_true",
                     help="replace the tiles of an earlier generate in --out (other files stay)")
    gen.set_defaults(run=_run_generate)


def _run_generate(args) -> None:
    from .cohort.rna_table import read_rna_table
    from .generate import check_out, generate, load_run, write_tiles

    out = check_out(resolve(args.out), args.overwrite)  # before minutes of sampling
    run = load_run(resolve(args.run_dir), args.checkpoint)
    rna = read_rna_table(resolve(args.rna))
    kw = {} if args.guidance is None else {"guidance": args.guidance}
    images, index, alignment = generate(run, rna, n=args.n, seed=args.seed, source=str(resolve(args.rna)), **kw)
    write_tiles(images, index, out, overwrite=args.overwrite)
    print(
        f"{len(images)} tiles for {len(rna)} profiles in {out}; genes: "
        f"{alignment['genes_expected']} expected, {alignment['genes_missing_filled_with_median']} missing "
        f"from the table, {alignment['genes_imputed']} imputed (filled with the training median), "
        f"{alignment['genes_extra_ignored']} extra ignored"
    )


def _train_command(sub) -> None:
    train = sub.add_parser(
        "train",
        help="train a model with its chapter's parameters file; on N processes under torchrun",
        description="Train MODEL (cgan, cvae, diffusion, hybrid) as its chapter does, with the "
        "chapter's parameters from a file such as params/demo/03_diffusion.yaml; missing ones take "
        "the chapter's defaults, and paths in the file are relative to the repository root, as in "
        "the chapter. `torchrun --nproc_per_node N -m rna2histo train ...` trains on N processes "
        "(one GPU each, or CPU): batch_size is then per process, a step sees N x batch_size tiles.",
    )
    train.add_argument("model", help="cgan, cvae, diffusion or hybrid")
    train.add_argument("-f", "--file", dest="params_file", required=True, help="the parameters (YAML)")
    train.add_argument("--run-dir", default=None, help="run folder (default: the file's run_dir)")
    train.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    train.add_argument("--compile", action="store_true",
                       help="torch.compile each network (the rest of the GPU fast path is on by "
                       "default on CUDA)")
    train.add_argument("--rna-encoder", choices=("mlp", "pca", "betavae"), default=None,
                       help="what the model is conditioned on (default: the file's rna_encoder, else mlp)")
    train.add_argument("--rna-latent", type=COUNT, default=None, help="latent dimensions for pca / betavae")
    train.set_defaults(run=_run_train)


def _run_train(args) -> None:
    from .book.runner import train_chapter

    run_dir = resolve(args.run_dir) if args.run_dir else None
    latent = {k: v for k, v in (("rna_encoder", args.rna_encoder), ("rna_latent", args.rna_latent)) if v is not None}
    train_chapter(args.model, resolve(args.params_file), run_dir, resume=args.resume, compile=args.compile, **latent)


def _weights_command(sub) -> None:
    weights = sub.add_parser("weights", help="pretrained weights for LPIPS and FID/KID")
    weights.add_argument("action", choices=["status", "download"])
    weights.add_argument("names", nargs="*", help="which (default: all): alexnet, inception")
    weights.set_defaults(run=_run_weights)


def _run_weights(args) -> None:
    from .nets import weights

    if args.action == "download":
        for path in weights.download(args.names or None):
            print(f"ok  {path}")
        return
    for row in weights.status():
        mark = "present" if row["present"] else f"missing (run: {weights.DOWNLOAD_COMMAND})"
        print(f"{row['weights']:<10} {mark}\n           for {row['used by']}\n           at {row['path']}")


def _segmentation_command(sub) -> None:
    seg = sub.add_parser("validate-segmentation", help="nuclei segmentation against binary masks")
    seg.add_argument("--images", required=True, help="H&E images (any format Pillow reads)")
    seg.add_argument("--masks", required=True, help="binary nuclei masks, same file stems")
    seg.add_argument("--mpp", type=SCALE, default=0.25, help="microns per pixel (default 0.25, 40x)")
    seg.set_defaults(run=_run_segmentation)


def _run_segmentation(args) -> None:
    from .evaluation.morphology import validate_segmentation

    table = validate_segmentation(resolve(args.images), resolve(args.masks), mpp=args.mpp)
    print(table.round(3).to_string(index=False))
    summary = table.attrs["summary"]
    print(f"mean pixel Dice {summary['mean_dice']:.3f}; "
          f"mean |relative nuclei-count error| {summary['mean_abs_count_error']:.3f}")


def _progress(message: str) -> None:
    """What a long command is doing, on stderr, so that stdout holds only its result."""
    print(f"bench: {message}", file=sys.stderr, flush=True)


def _bench_command(sub) -> None:
    bench = sub.add_parser(
        "bench",
        help="training throughput and FLOP utilisation, data, generation and memory, against targets",
        description="Measure, in one run on one device: a reference matmul rate; every model's "
        "training step (small and thesis presets, batch 16) in images/s and FLOP utilisation; the "
        "data pipeline; generation; the synthetic cohort build; the peak memory of an epoch over "
        "20,000 tiles at 128 px (cached under data/bench/). Ends with the CPU targets, met or not. "
        "--book PROFILE instead times `python -m rna2histo book --profile PROFILE` (make bench-demo).",
    )
    bench.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    bench.add_argument("--quick", action="store_true", help="fewer steps, no thesis training on a CPU: under a minute")
    bench.add_argument("--json", default=None, help="also write the results to this JSON file")
    bench.add_argument("--book", metavar="PROFILE", default=None, help="time the whole book with this profile instead")
    bench.set_defaults(run=_run_bench)


def _run_bench(args) -> None:
    from .bench import report, suite, whole_book

    if args.book:
        results = whole_book.measure_book(args.book)
        text = report.format_book_report(results)
    else:
        results = suite.run(args.device, quick=args.quick, progress=_progress)
        text = report.format_report(results)
    if args.json:
        suite.write_results(resolve(args.json), results)
    print(text)


class Parser(argparse.ArgumentParser):
    """argparse's refusal in one line, as every other refusal here (its usage block is -h's)."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message}; see {self.prog} -h\n")


def parser() -> argparse.ArgumentParser:
    top = Parser(prog="python -m rna2histo", description=__doc__.splitlines()[0])
    sub = top.add_subparsers(dest="command", required=True)
    _cohort_commands(sub)
    _book_command(sub)
    _train_command(sub)
    _generate_command(sub)
    _weights_command(sub)
    _segmentation_command(sub)
    _bench_command(sub)
    return top


def main(argv: list[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
    except SystemExit as done:  # -h, or argparse's one-line refusal: its status, returned as main's
        return done.code or 0
    try:
        args.run(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
