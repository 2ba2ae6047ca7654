"""The study's image metrics (SSIM, LPIPS, FID, KID), with 95% bootstrap intervals over patients.

The study compared real and generated H&E tiles with SSIM, LPIPS and FID "on random real/generated
pairs, with no uncertainty". We keep its protocol and add the uncertainty. Inputs everywhere are
uint8 tiles (N, S, S, 3) and `patients` (N,), the patient id of each tile.

- Pair metrics (SSIM, LPIPS): `random_pairs` draws (real, generated) index pairs, optionally of
  the same patient; `ssim_scores` and `lpips_scores` give one score per pair.
- Set metrics (FID, KID): InceptionV3 features are extracted once per tile set
  (`inception_features`, torch-fidelity's extractor), and the distances are computed from
  feature arrays (`fid_from_features`, `kid_from_features`), so a bootstrap resamples rows of
  features instead of running Inception again.
- Uncertainty: `stats.mean_ci` (pair scores) and `stats.set_distance_ci` (FID, KID) resample
  patients, the independent units.

Pretrained weights live in torch hub's cache (see `rna2histo.nets.weights`): LPIPS's AlexNet and
torch-fidelity's InceptionV3. Without them LPIPS is skipped ("auto") and FID/KID raise a
`UserError`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from skimage.metrics import structural_similarity

from ..data.dataset import tiles_to_model
from ..errors import UserError
from ..nets import weights
from .stats import frechet_distance

INCEPTION_NAME = "inception-v3-compat"  # torch-fidelity's registry name of its TF-ported InceptionV3
INCEPTION_FEATURE = "2048"  # the pool3 features FID and KID are defined on


# ---------------------------------------------------------------------------------------------
# Pairs and per-pair metrics


def random_pairs(
    real_patients, gen_patients, n_pairs: int = 500, same_patient: bool = False, seed: int = 0
) -> np.ndarray:
    """(n_pairs, 2) int array of (real index, generated index), drawn with replacement.

    Unpaired (the study's protocol), both tiles are uniform over their sets. With `same_patient`
    the generated tile is uniform over the generated tiles of patients that also have real
    tiles, and the real tile uniform over that patient's real tiles, so patients weigh by
    their number of generated tiles in both modes.
    """
    real_patients, gen_patients = np.asarray(real_patients), np.asarray(gen_patients)
    rng = np.random.default_rng(seed)
    if not same_patient:
        return np.stack(
            [rng.integers(0, len(real_patients), n_pairs), rng.integers(0, len(gen_patients), n_pairs)],
            axis=1,
        )
    eligible = np.flatnonzero(np.isin(gen_patients, real_patients))
    if len(eligible) == 0:
        raise UserError("same-patient pairs need patients with both real and generated tiles; none")
    gen_idx = rng.choice(eligible, n_pairs)
    real_idx = np.empty(n_pairs, dtype=np.int64)
    for patient in np.unique(gen_patients[gen_idx]):
        slots = np.flatnonzero(gen_patients[gen_idx] == patient)
        real_idx[slots] = rng.choice(np.flatnonzero(real_patients == patient), len(slots))
    return np.stack([real_idx, gen_idx], axis=1)


def ssim_scores(real: np.ndarray, generated: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """SSIM of each pair, (n_pairs,), on uint8 RGB tiles (N, S, S, 3).

    scikit-image's `structural_similarity` with win_size=11, channel_axis=-1 (the mean of the
    per-channel SSIMs) and data_range=255; its other defaults stand: a plain 11x11 uniform
    window (not Wang et al.'s Gaussian weights) and sample covariances.
    """
    return np.array(
        [
            structural_similarity(real[i], generated[j], win_size=11, channel_axis=-1, data_range=255)
            for i, j in pairs
        ]
    )


def load_lpips(mode: str = "auto"):
    """LPIPS(AlexNet) for `lpips_scores`, or None when `mode` is "auto" and the weights are absent.

    "lpips": the pretrained AlexNet is required (a `UserError` names the download command);
    "auto": pretrained when present, else None; "lpips-random": a random AlexNet trunk under
    LPIPS's calibrated linear layers, which exercises the code path offline and measures
    nothing perceptual. Same modes and checks as the hybrid's perceptual loss.
    """
    from ..models.hybrid import build_lpips, resolve_perceptual

    resolved = resolve_perceptual(mode)  # "lpips", "lpips-random" or "none"
    if resolved == "none":
        return None
    return build_lpips(random_trunk=resolved == "lpips-random")


@torch.no_grad()
def lpips_scores(
    net, real: np.ndarray, generated: np.ndarray, pairs: np.ndarray, batch_size: int = 64
) -> np.ndarray:
    """LPIPS distance of each pair, (n_pairs,), on uint8 tiles (N, S, S, 3); on the net's device."""
    device = next(net.parameters()).device
    out = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        # LPIPS expects [-1, 1], the models' range
        x0 = tiles_to_model(real[chunk[:, 0]]).to(device)
        x1 = tiles_to_model(generated[chunk[:, 1]]).to(device)
        out.append(net(x0, x1).flatten().float().cpu())  # (B, 1, 1, 1) -> (B,)
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# Set metrics from Inception features


def inception_weights_path(weights_path) -> Path:
    """The weights file to give torch-fidelity, checked here so that nothing tries the network."""
    if weights_path is None:
        entry = weights.WEIGHTS["inception"]  # where torch-fidelity would download them
        if not entry.present:
            raise UserError(
                f"FID and KID need the pretrained InceptionV3 weights ({entry.path}): "
                f"run `{weights.DOWNLOAD_COMMAND}`"
            )
        return entry.path
    path = Path(weights_path)
    if not path.is_file():
        raise UserError(
            f"{path}: no InceptionV3 weights there; `{weights.DOWNLOAD_COMMAND}` fetches the "
            "pretrained ones into torch hub's cache (then leave weights_path unset)"
        )
    return path


@torch.no_grad()
def inception_features(
    tiles: np.ndarray, weights_path=None, batch_size: int = 64, device: str = "cpu"
) -> np.ndarray:
    """torch-fidelity's InceptionV3 pool features of uint8 tiles (N, S, S, 3) -> (N, 2048) float32.

    The extractor takes uint8 (B, 3, H, W) and resizes to 299 px itself (bilinear, as TF 1.x did),
    so tiles of any size go in unscaled. `weights_path` is its `feature_extractor_weights_path`;
    None means the pretrained file in torch hub's cache, where torch-fidelity downloads it.
    """
    from torch_fidelity import FeatureExtractorInceptionV3

    path = inception_weights_path(weights_path)
    net = FeatureExtractorInceptionV3(
        INCEPTION_NAME, [INCEPTION_FEATURE], feature_extractor_weights_path=str(path)
    ).to(device)
    out = []
    for start in range(0, len(tiles), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(tiles[start : start + batch_size]))
        (features,) = net(x.permute(0, 3, 1, 2).to(device))  # uint8 (B, 3, S, S) -> (B, 2048)
        out.append(features.cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 2048), dtype=np.float32)


def random_inception_weights(path, seed: int = 0) -> Path:
    """Save a randomly initialised InceptionV3 state dict that `inception_features` accepts.

    For tests and offline checks of the code path only: features from it measure nothing
    about Inception, and FID/KID on them are not comparable to published values. Convolutions
    get He-normal weights: with PyTorch's default init the activations shrink ~1e-8-fold over
    the network's depth and every tile would have the same features.
    """
    from torch_fidelity import FeatureExtractorInceptionV3

    class _Unloaded(FeatureExtractorInceptionV3):  # same modules, hence the same state-dict keys
        def load_state_dict(self, state_dict, strict=True, assign=False):
            return None  # keep the random initialisation

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({}, path)  # the constructor insists on reading a file; overwritten below
    with torch.random.fork_rng(devices=[]):  # seed the init without touching the global stream
        torch.manual_seed(seed)
        net = _Unloaded(INCEPTION_NAME, [INCEPTION_FEATURE], feature_extractor_weights_path=str(path))
        for module in net.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    torch.save(net.state_dict(), path)
    return path


def fid_from_features(real_f: np.ndarray, gen_f: np.ndarray, method: str = "torch-fidelity") -> float:
    """Frechet distance |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) of features (N1, d), (N2, d).

    "torch-fidelity": its own `fid_features_to_statistics` and `fid_statistics_to_metric`
    (eigenvalues of the (d, d) product S1 S2; ~5 s on one core at d = 2048, the cost of each
    bootstrap resample). "low-rank": the same quantity from an SVD of an (N2, N1) matrix
    (`stats.frechet_distance`), for bootstraps over a few hundred tiles. Computed in float64.
    """
    if method == "low-rank":
        return frechet_distance(real_f, gen_f)
    if method != "torch-fidelity":
        raise ValueError(f"unknown FID method {method!r}; expected 'torch-fidelity' or 'low-rank'")
    real_f, gen_f = np.asarray(real_f, np.float64), np.asarray(gen_f, np.float64)
    from torch_fidelity.metric_fid import (
        KEY_METRIC_FID,
        fid_features_to_statistics,
        fid_statistics_to_metric,
    )

    stats = [fid_features_to_statistics(torch.from_numpy(f)) for f in (real_f, gen_f)]
    return float(fid_statistics_to_metric(*stats, verbose=False)[KEY_METRIC_FID])


def kid_from_features(
    real_f: np.ndarray, gen_f: np.ndarray, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> float:
    """KID: unbiased MMD^2 with k(x, y) = (x . y / d + 1)^3, mean over `subsets` random subsets.

    torch-fidelity's `kid_features_to_metric` (its defaults: 100 subsets of 1000); the subset
    size is clipped to the smaller set, where torch-fidelity would refuse. Subsets are drawn
    without replacement within each set. Each subset costs three (m, m) kernels over d features.
    """
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, kid_features_to_metric

    real_t, gen_t = (torch.from_numpy(np.asarray(f, np.float64)) for f in (real_f, gen_f))
    size = min(subset_size, len(real_t), len(gen_t))
    if size < 2:
        raise ValueError("KID needs at least two feature vectors per set")
    out = kid_features_to_metric(
        real_t, gen_t, kid_subsets=subsets, kid_subset_size=size, rng_seed=seed, verbose=False
    )
    return float(out[KEY_METRIC_KID_MEAN])
