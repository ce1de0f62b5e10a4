"""Make the figures of docs/simulation.md (PNG files in docs/images/).

    .venv/bin/python docs/make_simulation_figures.py [--seed 0]

Simulates one full-size scan (40x40 points, 512x512 px) into a temporary folder and plots a frame
per class, the radial profile per class, the overview with the true class map, the summed frame and
the flat-field, and the true beam centres.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from scipy.ndimage import median_filter  # noqa: E402

from napari_sedclassify.classes import ClassTable  # noqa: E402
from napari_sedclassify.simulate import simulate_scan  # noqa: E402

OUT = Path(__file__).resolve().parent / "images"
TABLE = ClassTable.default()
NAMES = {k: v.replace("_", " ") for k, v in TABLE.names.items()}
COLOURS = {k: v[:7] for k, v in TABLE.colours.items()}


def radial_profile(frame, centre, bad, n_bins=360):
    """Mean counts per 1-px ring about ``centre`` (index px), masked pixels excluded."""
    yy, xx = np.indices(frame.shape)
    r = np.hypot(yy - centre[0], xx - centre[1]).astype(int).ravel()
    ok = ~bad.ravel() & (r < n_bins)
    s = np.bincount(r[ok], frame.ravel()[ok].astype(float), minlength=n_bins)
    c = np.bincount(r[ok], minlength=n_bins)
    return s / np.maximum(c, 1)


def pick_points(truth, fractions, rng):
    """One representative scan point per class (the purest one for pure classes, a 50/50 mixed one)."""
    picks = {}
    for cid in (1, 2, 3, 4):
        pts = np.argwhere(truth == cid)
        if not len(pts):
            continue
        if cid == 4:
            f = fractions[pts[:, 0], pts[:, 1]]
            score = np.abs(np.sort(f, axis=1)[:, -1] - 0.55)
        else:
            score = -fractions[pts[:, 0], pts[:, 1], cid - 1] + 0.01 * rng.random(len(pts))
        picks[cid] = tuple(pts[np.argmin(score)])
    return picks


def main(seed: int) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        sim = simulate_scan(Path(tmp) / "scan.npy", seed=seed)
        data = np.load(sim.path, mmap_mode="r")
        flat = sim.load_flatfield()
        fm = flat.mean(0)
        bad = (fm == 0) | (fm > 1.3 * median_filter(fm, 3))  # dead and hot pixels
        geom = sim.geometry
        picks = pick_points(sim.truth, sim.fractions, rng)

        # 1. one frame per class, log scale
        fig, axes = plt.subplots(1, len(picks), figsize=(4.2 * len(picks), 4.4))
        for ax, (cid, (iy, ix)) in zip(axes, picks.items()):
            f = np.asarray(data[iy, ix], dtype=float)
            ax.imshow(np.log10(1 + f), cmap="inferno", vmin=0, vmax=np.log10(4096))
            cy, cx = sim.centres[iy, ix]
            r37 = geom.d_A_to_radius_px(3.7)
            ax.add_patch(plt.Circle((cx, cy), r37, fill=False, ls=":", lw=0.6, color="w"))
            fr = ", ".join(f"{v:.0%}" for v in sim.fractions[iy, ix])
            ax.set_title(f"{NAMES[cid]} ({iy}, {ix})\nC/ice/xtal {fr}", fontsize=9)
            ax.set_axis_off()
        fig.suptitle("Simulated frames, log10(1 + counts); dotted circle: d = 3.7 Å about the true centre",
                     fontsize=10)
        fig.tight_layout(rect=(0, 0, 1, 0.93))
        fig.savefig(OUT / "sim_frames_per_class.png", dpi=110)
        plt.close(fig)

        # 2. radial profile per class: mean and 10-90 % band over all frames of the class
        r = np.arange(360)
        fig, ax = plt.subplots(figsize=(8, 4.6))
        for cid in (1, 2, 3, 4):
            pts = np.argwhere(sim.truth == cid)
            if not len(pts):
                continue
            sel = pts[rng.choice(len(pts), size=min(len(pts), 60), replace=False)]
            prof = np.array([radial_profile(data[iy, ix], sim.centres[iy, ix], bad) for iy, ix in sel])
            lo, mid, hi = np.percentile(prof, [10, 50, 90], axis=0)
            ax.plot(r, mid, color=COLOURS[cid], label=f"{NAMES[cid]} (n={len(pts)})")
            ax.fill_between(r, lo, hi, color=COLOURS[cid], alpha=0.2, lw=0)
        for d in (3.7, 2.13, 1.21):
            rr = geom.d_A_to_radius_px(d)
            ax.axvline(rr, color="k", lw=0.5, ls=":")
            ax.text(rr + 2, 0.92, f"{d} Å", transform=ax.get_xaxis_transform(), fontsize=8)
        ax.set_yscale("log")
        ax.set_xlim(0, 360)
        ax.set_ylim(0.01, None)
        ax.set_xlabel("radius about the true centre (px)")
        ax.set_ylabel("mean counts per px (median, 10-90 % band)")
        ax.legend(fontsize=8)
        ax.set_title("Radial intensity average per class (60 frames each, dead/hot pixels masked)", fontsize=10)
        fig.tight_layout()
        fig.savefig(OUT / "sim_radial_profiles.png", dpi=110)
        plt.close(fig)

        # 3. overview, truth, integrated image
        cmap = ListedColormap([TABLE.colours[k][:7] for k in (1, 2, 3, 4)])
        integrated = data.reshape(data.shape[:2] + (-1,)).sum(-1, dtype=np.int64)
        a = sim.overview_to_scan
        fig, axes = plt.subplots(1, 3, figsize=(14, 4.8))
        ov = sim.overview
        inv = np.linalg.inv(a)
        corners = np.array([[-0.5, -0.5, 1], [-0.5, sim.truth.shape[1] - 0.5, 1],
                            [sim.truth.shape[0] - 0.5, sim.truth.shape[1] - 0.5, 1],
                            [sim.truth.shape[0] - 0.5, -0.5, 1], [-0.5, -0.5, 1]]) @ inv.T
        axes[0].imshow(ov, cmap="gray")
        axes[0].plot(corners[:, 1], corners[:, 0], color="y", lw=1)
        axes[0].set_title(f"image-mode overview ({ov.shape[0]}x{ov.shape[1]} px), scan area in yellow", fontsize=9)
        axes[1].imshow(sim.truth, cmap=cmap, vmin=0.5, vmax=4.5, interpolation="nearest")
        axes[1].set_title("true class map (" + ", ".join(f"{NAMES[k]}" for k in (1, 2, 3, 4)) + ")",
                          fontsize=9)
        for k in (1, 2, 3, 4):
            axes[1].plot([], [], "s", color=COLOURS[k], label=NAMES[k])
        axes[1].legend(fontsize=7, loc="lower right")
        axes[2].imshow(integrated, cmap="gray")
        axes[2].set_title("integrated image (total counts per frame)", fontsize=9)
        for ax in axes:
            ax.set_axis_off()
        fig.tight_layout()
        fig.savefig(OUT / "sim_overview_truth.png", dpi=110)
        plt.close(fig)

        # 4. detector: summed frame and flat-field
        total = np.zeros(data.shape[2:], dtype=np.int64)
        for iy in range(data.shape[0]):
            total += data[iy].sum(0, dtype=np.int64)
        fig, axes = plt.subplots(1, 2, figsize=(10, 4.8))
        axes[0].imshow(np.log10(1 + total), cmap="inferno")
        axes[0].set_title("sum of all 1600 frames, log10", fontsize=9)
        axes[1].imshow(fm, cmap="gray", vmin=np.percentile(fm, 1), vmax=np.percentile(fm, 99.5))
        axes[1].set_title(f"flat-field, mean of {flat.shape[0]} flood frames", fontsize=9)
        for ax in axes:
            ax.set_axis_off()
        fig.tight_layout()
        fig.savefig(OUT / "sim_detector.png", dpi=110)
        plt.close(fig)

        # 5. true centres
        fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
        for ax, k, lab in zip(axes, (0, 1), ("cy", "cx")):
            im = ax.imshow(sim.centres[..., k], cmap="coolwarm")
            fig.colorbar(im, ax=ax, label="px")
            ax.set_title(f"true beam centre {lab} (index px) per scan point", fontsize=9)
        fig.tight_layout()
        fig.savefig(OUT / "sim_centres.png", dpi=110)
        plt.close(fig)
    print(f"figures written to {OUT}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    main(ap.parse_args().seed)
