"""The evaluation protocol: which tiles are compared, and every metric of one model in one call.

Protocol (the study's, made precise):
- real: every tile of every test patient;
- generated: `n` tiles (7 in the study) per test patient from that patient's RNA, normalised
  with the run's own normaliser, from the run's ``best`` checkpoint (EMA weights for diffusion),
  all noise from one generator seeded with `seed`;
- SSIM and LPIPS on `n_pairs` (real, generated) pairs drawn at random (the study) and drawn
  within a patient; FID and KID on up to `n_fid` tiles per side; fine detail (grain, blur) as
  high-frequency ratios on all tiles (`detail`); faithfulness on morphometrics;
- the ``real`` baseline: each test patient's real tiles split in two halves, one standing in for
  the generated set, so every measure has a real-vs-real reference at the same sample size;
- the ``shuffled`` control: generated tiles relabelled by a derangement of the test patients
  (`faithfulness.shuffle_labels`), so a model that ignores its RNA is exposed;
- every value with a 95% percentile interval from resampling test patients.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..data.rna import fit_on_training, program_scores
from ..errors import UserError
from ..generate import generate, load_run
from ..markers import MARKERS
from ..paths import resolve
from . import faithfulness as fa
from . import image_metrics as im
from . import reprediction as rp
from .detail import detail_metrics
from .morphology import morphometrics_table
from .stats import mean_ci, set_distance_ci, summary, unavailable


@dataclass
class TileSet:
    """Tiles (N, S, S, 3) uint8 and the patient of each, `patients` (N,)."""

    tiles: np.ndarray
    patients: np.ndarray

    def subset(self, rows: np.ndarray) -> TileSet:
        return TileSet(self.tiles[rows], self.patients[rows])


def real_tiles(cohort, split: str = "test") -> TileSet:
    """Every tile of the split's patients, read from the memory map."""
    rows = cohort.tile_indices(split)
    return TileSet(np.asarray(cohort.tiles[rows]), cohort.tiles_table["patient_id"].to_numpy()[rows].astype(str))


def generated_tiles(run_dir, cohort, n: int = 7, seed: int = 0, split: str = "test") -> tuple[TileSet, dict]:
    """`n` tiles per patient of the split from the run's best checkpoint, and how it went.

    The info holds the checkpoint's epoch and the generation time in ms per tile (this machine,
    this batch size: a resource figure, not a benchmark).
    """
    run = load_run(resolve(run_dir), "best")
    ids = cohort.patients(split)
    started = time.perf_counter()
    tiles, index, _ = generate(run, cohort.rna.loc[ids], n=n, seed=seed)
    ms = 1000 * (time.perf_counter() - started) / len(tiles)
    counts = run.model.parameter_counts()
    info = {
        "best_epoch": run.checkpoint["epoch"],
        "ms_per_image": ms,
        "parameters": sum(counts.values()),
        "parts": ", ".join(f"{k} {v:,}" for k, v in counts.items()),
    }
    return TileSet(tiles, index["patient_id"].to_numpy().astype(str)), info


def split_halves(real: TileSet, seed: int = 0) -> tuple[TileSet, TileSet]:
    """Each patient's tiles shuffled and cut in two: (reference, stand-in for the generated)."""
    rng = np.random.default_rng(seed)
    first, second = [], []
    for patient in np.unique(real.patients):
        rows = rng.permutation(np.flatnonzero(real.patients == patient))
        first.append(rows[: (len(rows) + 1) // 2])
        second.append(rows[(len(rows) + 1) // 2 :])
    return real.subset(np.concatenate(first)), real.subset(np.concatenate(second))


def morphometrics_of(tiles: TileSet, mpp: float | None) -> pd.DataFrame:
    """Per-tile morphometrics with a patient_id column."""
    table = morphometrics_table(tiles.tiles, mpp)
    table.insert(0, "patient_id", tiles.patients)
    return table


def rna_scores(cohort) -> pd.DataFrame:
    """(patients, programs) program scores of every patient, z-scored on the training patients."""
    z, _ = fit_on_training(cohort).transform(cohort.rna)
    return program_scores(z, MARKERS)


@dataclass
class Settings:
    """How one evaluation is run (the chapter's parameters)."""

    n_pairs: int = 500
    n_fid: int = 1000
    n_boot: int = 1000
    seed: int = 0
    mpp: float | None = None


def pair_metrics(real: TileSet, gen: TileSet, lpips_net, s: Settings) -> dict:
    """SSIM (and LPIPS when `lpips_net`) on random and same-patient pairs: value, ci, std."""
    out = {}
    for kind, same in (("random", False), ("same_patient", True)):
        pairs = im.random_pairs(real.patients, gen.patients, s.n_pairs, same_patient=same, seed=s.seed)
        groups = gen.patients[pairs[:, 1]]  # a pair belongs to its generated tile's patient
        scores = {"ssim": im.ssim_scores(real.tiles, gen.tiles, pairs)}
        if lpips_net is not None:
            scores["lpips"] = im.lpips_scores(lpips_net, real.tiles, gen.tiles, pairs)
        for name, values in scores.items():
            key = name if (name, kind) == ("lpips", "random") else f"{name}_{kind}"
            ci = mean_ci(values, groups, n_boot=s.n_boot, seed=s.seed)
            out[key] = {**summary(*ci), "std": float(values.std())}
    return out


def _capped(tiles: TileSet, cap: int, seed: int) -> TileSet:
    """At most `cap` tiles, drawn without replacement (seeded), all of them when fewer."""
    if len(tiles.tiles) <= cap:
        return tiles
    return tiles.subset(np.sort(np.random.default_rng(seed).choice(len(tiles.tiles), cap, replace=False)))


def inception_metrics(real: TileSet, gen: TileSet, features, s: Settings) -> dict:
    """FID and KID on up to `n_fid` tiles per side; `features(tiles)` -> (N, 2048) or UserError."""
    real, gen = _capped(real, s.n_fid, s.seed), _capped(gen, s.n_fid, s.seed)
    try:
        real_f, gen_f = features(real.tiles), features(gen.tiles)
    except UserError as err:
        return {"fid": unavailable(str(err)), "kid": unavailable(str(err))}
    sizes = {"n_real": len(real_f), "n_generated": len(gen_f)}
    boot = {"n_boot": min(s.n_boot, 200), "seed": s.seed}  # each resample is a full FID
    fid = set_distance_ci(
        lambda a, b: im.fid_from_features(a, b, method="low-rank"), real_f, gen_f, real.patients, gen.patients, **boot
    )
    kid = set_distance_ci(
        lambda a, b: im.kid_from_features(a, b, subsets=20, seed=s.seed), real_f, gen_f, real.patients, gen.patients, **boot
    )
    return {"fid": {**summary(*fid), **sizes}, "kid": {**summary(*kid), **sizes}}


def faithfulness_metrics(real_m: pd.DataFrame, gen_m: pd.DataFrame, scores: pd.DataFrame, s: Settings) -> dict:
    """The faithfulness measures under their metrics.json names, each {"value", "ci"}."""
    return fa.faithfulness_metrics(real_m, gen_m, scores, n_boot=s.n_boot, seed=s.seed)


@dataclass
class Reprediction:
    """The cohort's tile -> expression regressor and the measured expression it is scored against."""

    regressor: rp.Regressor
    truth: pd.DataFrame  # (patients, target genes), z-scored on the training patients

    @classmethod
    def of(cls, cohort) -> Reprediction:
        normaliser = fit_on_training(cohort)
        regressor = rp.cohort_regressor(cohort, normaliser)
        return cls(regressor, rp.measured(cohort, normaliser, regressor.genes))

    def metrics(self, tiles: TileSet, mapping: dict, s: Settings) -> tuple[dict, dict]:
        """`rna_reprediction_spearman` of the tiles and of their shuffled control (labels by `mapping`)."""
        predicted = self.regressor.patient_predictions(tiles.tiles, tiles.patients)
        shuffled = fa.shuffle_labels(predicted.reset_index(), mapping).set_index("patient_id").sort_index()
        kw = {"n_boot": s.n_boot, "seed": s.seed}
        return (rp.reprediction_spearman(predicted, self.truth, **kw),
                rp.reprediction_spearman(shuffled, self.truth, **kw))


def evaluate_set(real: TileSet, gen: TileSet, scores, s: Settings, lpips_net=None, features=None, real_m=None,
                 reprediction: Reprediction | None = None):
    """Every metric of one candidate set against the real test tiles, plus its shuffled control.

    `features`: the Inception feature extractor, or None when its weights are absent (FID and
    KID are then marked unavailable by the caller). Returns the metrics.json entry of one model
    and the two morphometrics tables (real, generated) for the chapter's figures.
    """
    out = pair_metrics(real, gen, lpips_net, s)
    if features is not None:
        out.update(inception_metrics(real, gen, features, s))
    out.update(detail_metrics(real.tiles, real.patients, gen.tiles, gen.patients, n_boot=s.n_boot, seed=s.seed))
    real_m = morphometrics_of(real, s.mpp) if real_m is None else real_m  # computed once per cohort
    gen_m = morphometrics_of(gen, s.mpp)
    out.update(faithfulness_metrics(real_m, gen_m, scores, s))
    mapping = fa.derangement(sorted(set(gen.patients)), s.seed)
    out["shuffled"] = faithfulness_metrics(real_m, fa.shuffle_labels(gen_m, mapping), scores, s)
    if reprediction is not None:
        key = "rna_reprediction_spearman"
        out[key], out["shuffled"][key] = reprediction.metrics(gen, mapping, s)
    return out, real_m, gen_m


# --- one evaluation of several runs, resumable --------------------------------------------------


@dataclass
class Evaluation:
    """What the chapter shows: metrics.json's content and the tiles and tables behind it."""

    metrics: dict  # model name (and "real") -> metric name -> {"value", "ci"} or unavailable
    real: TileSet
    generated: dict  # model name -> TileSet
    morphometrics: dict  # model name (and "real") -> generated-side table; "real_all" the real tiles
    resources: pd.DataFrame  # one row per model: parameters, training time, ms per image, memory


def _training_resources(run_dir) -> dict:
    """Training seconds and peak memory from a run's metrics.csv."""
    metrics = pd.read_csv(resolve(run_dir) / "metrics.csv")
    out = {"epochs": int(metrics["epoch"].max()), "train_minutes": metrics["seconds"].sum() / 60}
    if "peak_memory_gb" in metrics:
        out["peak_memory_gb"] = float(metrics["peak_memory_gb"].max())
    return out


def _model_entry(name, run_dir, cohort, real, real_m, scores, n, s, lpips_net, features, reprediction):
    gen, info = generated_tiles(run_dir, cohort, n=n, seed=s.seed)
    entry, _, gen_m = evaluate_set(real, gen, scores, s, lpips_net, features, real_m=real_m,
                                   reprediction=reprediction)
    if cohort.patients_table is not None:  # simulated: the true program levels, not the RNA
        truth = fa.true_programs(cohort.patients_table)
        entry["program_truth_spearman"] = faithfulness_metrics(real_m, gen_m, truth, s)["conditioning_spearman"]
    resources = {"model": name, **info, **_training_resources(run_dir)}
    return entry, gen, gen_m, resources


def _unavailable_everywhere(entry: dict, names, reason: str) -> None:
    for name in names:
        entry.setdefault(name, unavailable(reason))


def evaluate(runs: dict, cohort, out_dir, n: int = 7, settings: Settings | None = None,
             perceptual: str = "auto", inception_weights=None) -> Evaluation:
    """Evaluate every run of `runs` (model name -> run folder) on the cohort's test patients.

    Writes ``metrics.json`` into `out_dir` (atomically) and returns everything the chapter
    plots. A run without a checkpoint is listed as unavailable with the reason, not fatal.
    """
    from ..runs import write_json

    s = settings or Settings(mpp=cohort.manifest.get("mpp"))
    real = real_tiles(cohort)
    scores = rna_scores(cohort)
    lpips_net, lpips_reason = _lpips(perceptual)
    features, inception_reason = _inception(inception_weights)
    reference, half = split_halves(real, s.seed)
    baseline, real_m, half_m = evaluate_set(reference, half, scores, s, lpips_net, features)
    reprediction = Reprediction.of(cohort)
    # the ceiling from all of a test patient's real tiles (the halves would understate it)
    key, mapping = "rna_reprediction_spearman", fa.derangement(sorted(set(real.patients)), s.seed)
    baseline[key], baseline["shuffled"][key] = reprediction.metrics(real, mapping, s)
    metrics, generated, morph, resources = {"real": baseline}, {}, {"real": half_m}, []
    real_all = morphometrics_of(real, s.mpp)
    for name, run_dir in runs.items():
        try:
            entry, gen, gen_m, used = _model_entry(
                name, run_dir, cohort, real, real_all, scores, n, s, lpips_net, features, reprediction
            )
        except UserError as err:  # no checkpoint: say so in the table, evaluate the others
            metrics[name] = unavailable(str(err))
            continue
        metrics[name], generated[name], morph[name] = entry, gen, gen_m
        resources.append(used)
    for entry in metrics.values():
        if "unavailable" not in entry:
            if lpips_reason:
                _unavailable_everywhere(entry, ("lpips", "lpips_same_patient"), lpips_reason)
            if inception_reason:
                _unavailable_everywhere(entry, ("fid", "kid"), inception_reason)
    metrics["protocol"] = {
        "test_patients": len(set(real.patients)), "real_tiles": len(real.tiles), "generated_per_patient": n,
        "n_pairs": s.n_pairs, "n_fid": s.n_fid, "n_boot": s.n_boot, "seed": s.seed, "level": 0.95,
        "real_baseline": "each test patient's real tiles split in two halves, one half as the generated set",
        "reprediction": {"targets": len(reprediction.regressor.genes), "ceiling": "all real tiles of each test patient",
                         **{k: v for k, v in reprediction.regressor.settings.items() if k != "history"}},
    }
    write_json(resolve(out_dir) / "metrics.json", metrics)
    morph["real_all"] = real_all
    return Evaluation(metrics, real, generated, morph, pd.DataFrame(resources))


def _lpips(mode: str):
    """(LPIPS net or None, reason it is unavailable or None)."""
    from ..nets import weights

    net = im.load_lpips(mode)
    if net is None:
        reason = f"LPIPS needs the pretrained AlexNet weights: run `{weights.DOWNLOAD_COMMAND}`"
        return None, reason if mode == "auto" else f"LPIPS switched off (perceptual={mode!r})"
    return net, None


def _inception(weights_path):
    """(feature function or None, reason it is unavailable or None); never touches the network."""
    try:
        im.inception_weights_path(weights_path)
    except UserError as err:
        return None, str(err)
    return (lambda tiles: im.inception_features(tiles, weights_path)), None
