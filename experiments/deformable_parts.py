"""Do learned offsets move RoI bins onto an object's parts? A synthetic test of Deformable ConvNets'
claim (Dai et al., 2017, https://arxiv.org/abs/1703.06211).

Objects are made of three parts of three distinct types at class-specific slots of the object's frame
(a class is which type sits at which slot), each part displaced by a random per-instance deformation,
on backgrounds cluttered with stray parts and noise. The "image" is already a feature map: one channel
per part type, each part a Gaussian blob in its type's channel. The box is the object's frame with
jitter. Identical small heads that differ only in the RoI operator are trained with the same optimiser,
steps, batches and seeds, and tested on objects generated from other seeds:

    part channels -> [1x1 conv to 3 * 3*3 channels: position-sensitive operators only]
                  -> RoI operator, 3x3 bins, 3 channels out -> flatten -> Linear-ReLU-Linear -> class

The part channels are the features (a fixed backbone of perfect part detectors, which keeps the run
small). Every operator gives (K, 3, 3, 3), so the classifier is the same for all heads; the
position-sensitive operators read 3 * 3*3 channels, which their extra 1x1 convolution makes from the
part channels (R-FCN's score map). Results: experiments/results/deformable_parts.md, .png (where the
trained DeformRoIPoolPack samples) and _curves.png.

    python experiments/deformable_parts.py             # the default run: CPU minutes
    python experiments/deformable_parts.py --full      # more steps and seeds
"""
import argparse
import itertools
import os
import platform
import sys
import time

import numba
import numpy as np
from tqdm import tqdm

import numba_droi
from numba_droi import _backend, nn, optim
from numba_droi import functional as F

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

# -- the dataset ---------------------------------------------------------------------------------------

SIZE = 32                      # side of the (square) part-channel map, in pixels
PART_TYPES = 3
SLOTS = np.array([[0.25, 0.25], [0.75, 0.25], [0.5, 0.75]])  # canonical (x, y) of the parts in the frame
CLASSES = np.array(list(itertools.permutations(range(PART_TYPES))))  # class -> part type at each slot
DISPLACEMENT = 0.25            # each part moves by up to this fraction of the frame, in x and in y
PART_SIGMA = 1.2               # blob radius of a part, pixels
CLUTTER = 4                    # stray parts per image, anywhere (inside boxes too), weaker than parts
NOISE = 0.1                    # standard deviation of the additive Gaussian noise
BOX_JITTER = 0.1               # each box edge moves by up to this fraction of the frame
BINS = 3


def make_batch(seed, count, displacement=DISPLACEMENT):
    """``count`` objects, one per image, all drawn from ``numpy.random.default_rng(seed)``.

    Returns ``images`` (count, PART_TYPES, SIZE, SIZE) float32, ``rois`` (count, 5) float32 rows
    ``[image, x1, y1, x2, y2]`` in pixel coordinates (a pixel's centre at +0.5, as ``aligned=True``
    reads them), ``labels`` (count,) and ``parts`` (count, 3, 2): the (x, y) of each slot's part.
    """
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(CLASSES), count)
    width = rng.uniform(14, 24, count)
    height = width * rng.uniform(0.8, 1.25, count)
    x0 = rng.uniform(1, SIZE - 1 - width)
    y0 = rng.uniform(1, SIZE - 1 - np.minimum(height, SIZE - 2))
    height = np.minimum(height, SIZE - 1 - y0)
    frame = np.stack([width, height], 1)[:, None]
    inside = np.clip(SLOTS + rng.uniform(-displacement, displacement, (count, len(SLOTS), 2)), 0.1, 0.9)
    parts = np.stack([x0, y0], 1)[:, None] + inside * frame
    images = NOISE * rng.standard_normal((count, PART_TYPES, SIZE, SIZE))
    blobs = [(parts[:, slot], CLASSES[labels, slot], np.ones(count)) for slot in range(len(SLOTS))]
    blobs += [(rng.uniform(0, SIZE, (count, 2)), rng.integers(0, PART_TYPES, count),
               rng.uniform(0.3, 0.6, count)) for _ in range(CLUTTER)]
    pixel = np.arange(SIZE) + 0.5
    for centre, channel, amplitude in blobs:
        dx = pixel[None, None, :] - centre[:, 0, None, None]
        dy = pixel[None, :, None] - centre[:, 1, None, None]
        images[np.arange(count), channel] += amplitude[:, None, None] * np.exp(
            -(dx * dx + dy * dy) / (2 * PART_SIGMA ** 2))
    jitter = rng.uniform(-BOX_JITTER, BOX_JITTER, (count, 4)) * np.concatenate([frame[:, 0]] * 2, 1)
    boxes = np.stack([x0, y0, x0 + width, y0 + height], 1) + jitter
    boxes = np.clip(boxes, 0, SIZE)
    rois = np.concatenate([np.arange(count)[:, None], boxes], 1)
    return images.astype(np.float32), rois.astype(np.float32), labels, parts


# -- the heads -----------------------------------------------------------------------------------------

HEADS = ("RoI Pool", "RoI Align", "PS RoI Align", "DeformRoIPoolPack", "ModulatedDeformRoIPoolPack",
         "DeformPSRoIPoolPack")
POSITION_SENSITIVE = ("PS RoI Align", "DeformPSRoIPoolPack")


def make_pool(name, width, sampling, rng, gamma=0.1):
    """The RoI operator of head ``name``: ``width`` channels in (``width * BINS**2`` for the position
    sensitive ones), ``(K, width, BINS, BINS)`` out; ``sampling`` samples per bin side (0: adaptive,
    ``ceil(bin size)``; the deformable PS pooling, which has no adaptive mode, then takes 4 as R-FCN's
    deformable head does); the packs' offset predictors initialised from ``rng``; ``gamma`` scales
    their offsets (``trans_std`` of the deformable PS pooling)."""
    if name == "RoI Pool":
        return nn.RoIPool(BINS, 1.0)
    if name == "RoI Align":
        return nn.RoIAlign(BINS, 1.0, sampling, aligned=True)
    if name == "PS RoI Align":
        return nn.PSRoIAlign(BINS, 1.0, sampling)
    if name == "DeformRoIPoolPack":
        return nn.DeformRoIPoolPack(BINS, width, 64, 1.0, sampling, gamma, rng=rng)
    if name == "ModulatedDeformRoIPoolPack":
        return nn.ModulatedDeformRoIPoolPack(BINS, width, 64, 1.0, sampling, gamma, rng=rng)
    if name == "DeformPSRoIPoolPack":
        return nn.DeformPSRoIPoolPack(width, 1.0, width, BINS, BINS, BINS, sampling or 4,
                                      trans_std=gamma, rng=rng)
    raise ValueError(f"head must be one of {HEADS}, got {name!r}")


class Head(nn.Module):
    """[1x1 conv, position-sensitive operators only] -> RoI operator -> flatten -> Linear-ReLU-Linear.

    The part channels are the features (a fixed "backbone" of perfect part detectors); every operator
    gives ``(K, PART_TYPES, BINS, BINS)``, so the classifier is the same for all heads."""

    def __init__(self, name, hidden=64, sampling=0, seed=0, gamma=0.1):
        rng = np.random.default_rng(seed)
        self.name = name
        if name in POSITION_SENSITIVE:
            self.score = nn.Conv2d(PART_TYPES, PART_TYPES * BINS * BINS, 1, rng=rng)
        self.pool = make_pool(name, PART_TYPES, sampling, rng, gamma)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(PART_TYPES * BINS * BINS, hidden, rng=rng),
                                        nn.ReLU(), nn.Linear(hidden, len(CLASSES), rng=rng))

    def forward(self, images, rois):
        if self.name == "DeformPSRoIPoolPack":
            pooled = self.pool(self.score(images), rois, images)  # offsets from the part channels
        elif self.name in POSITION_SENSITIVE:
            pooled = self.pool(self.score(images), rois)
        else:
            pooled = self.pool(images, rois)
        return self.classifier(pooled)


# -- training ------------------------------------------------------------------------------------------

TEST_SEED = 10 ** 6  # test objects come from seeds >= this, training batches from seeds below it


def train(name, seed, steps, batch=32, lr=3e-3, test=None, eval_every=50, xp=np, progress=None,
          displacement=DISPLACEMENT, sampling=0, gamma=0.1):
    """Train head ``name`` from ``seed`` with Adam for ``steps`` batches of fresh objects.

    Returns the trained head and ``{"loss": per-step losses, "eval_steps", "accuracy": test accuracy
    at those steps}``; ``test`` is ``(images, rois, labels)`` or None (no evaluation)."""
    head = Head(name, sampling=sampling, seed=seed, gamma=gamma).to(xp)
    optimizer = optim.Adam(head.parameters(), lr=lr)
    history = {"loss": [], "eval_steps": [], "accuracy": []}
    for step in range(steps):
        images, rois, labels, _ = make_batch(seed * steps + step, batch, displacement)
        optimizer.zero_grad()
        loss = F.softmax_cross_entropy(head(xp.asarray(images), xp.asarray(rois)), labels)
        loss.backward()
        optimizer.step()
        history["loss"].append(loss.item())
        if test is not None and ((step + 1) % eval_every == 0 or step + 1 == steps):
            history["eval_steps"].append(step + 1)
            history["accuracy"].append(accuracy(head, *test, xp=xp))
        if progress is not None:
            progress.update()
            progress.set_postfix_str(f"{name} seed {seed} loss {loss.item():.3f}", refresh=False)
    return head, history


def accuracy(head, images, rois, labels, xp=np, chunk=256):
    """The fraction of ``labels`` that ``head`` predicts, ``chunk`` objects at a time."""
    correct = 0
    with numba_droi.no_grad():
        for start in range(0, len(labels), chunk):
            part = slice(start, start + chunk)
            chunk_rois = rois[part].copy()
            chunk_rois[:, 0] -= start
            logits = head(xp.asarray(images[part]), xp.asarray(chunk_rois)).numpy()
            correct += int((logits.argmax(1) == labels[part]).sum())
    return correct / len(labels)


# -- where the deformable pooling samples ----------------------------------------------------------------

def sampling_positions(pack, features, rois):
    """Where ``pack`` (a DeformRoIPoolPack) pools each bin, in the map's index coordinates (pixel
    ``i`` at ``i``): ``(regular, deformed)``, each ``(K, BINS, BINS, 2)`` holding the (x, y) of the bin
    centres without and with the learned offset. The rule of docs/operators.md: ``aligned`` RoI Align
    geometry, the bin moved by ``gamma * roi_size * offset``, so the mean of its samples moves by the
    same amount."""
    features, rois = _backend.as_array(features), _backend.as_array(rois)
    with numba_droi.no_grad():
        offset = _backend.to_numpy(pack._offset(pack._pooled_rows(features, rois)).data)
    rois = _backend.to_numpy(rois).astype(np.float64)
    start = rois[:, 1:3] * pack.spatial_scale - 0.5                     # (K, 2): x1', y1'
    size = (rois[:, 3:5] - rois[:, 1:3]) * pack.spatial_scale            # (K, 2): roi_w, roi_h
    bins = np.array(pack.output_size[::-1])                              # (PW, PH)
    index = np.stack(np.meshgrid(np.arange(bins[1]), np.arange(bins[0]), indexing="ij")[::-1], -1)
    regular = start[:, None, None] + (index + 0.5) * (size / bins)[:, None, None]
    moved = pack.gamma * size[:, None, None] * np.moveaxis(offset, 1, -1)  # offset channels: x, y
    return regular, regular + moved


def nearest_bin_distance(head, images, rois, parts, xp=np):
    """Mean distance in pixels from each part to the nearest bin centre of ``head``'s
    DeformRoIPoolPack, over the given objects: ``(regular grid, with the learned offsets)``."""
    regular, deformed = sampling_positions(head.pool, xp.asarray(images), xp.asarray(rois))
    centres = (parts - 0.5)[:, :, None]  # index coordinates, (K, 3, 1, 2)

    def mean_nearest(bins):
        bins = bins.reshape(len(bins), 1, -1, 2)
        return float(np.linalg.norm(centres - bins, axis=-1).min(-1).mean())

    return mean_nearest(regular), mean_nearest(deformed)


# -- the figures and the table -----------------------------------------------------------------------

def plot_sampling(path, head, images, rois, labels, parts, columns=4, dpi=100):
    """For the first ``columns`` objects: the part channels (summed), the box, the regular bin centres
    and the deformed ones of ``head``'s DeformRoIPoolPack; saved as a PNG at ``path``. Returns the
    plotted ``(regular, deformed)`` positions (``sampling_positions``)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xp = _backend.array_module(head.classifier[1].weight.data)
    regular, deformed = sampling_positions(head.pool, xp.asarray(images[:columns]),
                                           xp.asarray(rois[:columns]))
    figure, axes = plt.subplots(1, columns, figsize=(3 * columns, 3.3), dpi=dpi)
    for k, ax in enumerate(np.atleast_1d(axes)):
        ax.imshow(images[k].sum(0), cmap="gray_r", origin="upper")
        x1, y1, x2, y2 = rois[k, 1:] - 0.5
        ax.add_patch(matplotlib.patches.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color="tab:blue",
                                                  lw=1.5))
        ax.plot(*regular[k].reshape(-1, 2).T, "o", mfc="none", mec="tab:blue", ms=7, label="regular bins")
        ax.plot(*deformed[k].reshape(-1, 2).T, "x", color="tab:red", ms=7, mew=2, label="deformed bins")
        for start, end in zip(regular[k].reshape(-1, 2), deformed[k].reshape(-1, 2)):
            ax.annotate("", end, start, arrowprops=dict(arrowstyle="->", color="tab:red", lw=0.8))
        ax.plot(*(parts[k] - 0.5).T, "+", color="tab:green", ms=10, mew=1.5, label="part centres")
        ax.set_title(f"class {labels[k]}: types {''.join(map(str, CLASSES[labels[k]]))}", fontsize=9)
        ax.set_xlim(-0.5, SIZE - 0.5)
        ax.set_ylim(SIZE - 0.5, -0.5)
        ax.set_xticks([])
        ax.set_yticks([])
    np.atleast_1d(axes)[0].legend(loc="lower left", fontsize=7, framealpha=0.8)
    figure.suptitle("DeformRoIPoolPack: regular bin centres (o) and learned deformed ones (x)", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=dpi)
    plt.close(figure)
    return regular, deformed


def plot_curves(path, histories, window=25, dpi=100):
    """Training loss (moving average over ``window`` steps) and test accuracy of every head, mean over
    seeds; ``histories[name]`` is a list of one ``train`` history per seed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (loss_ax, accuracy_ax) = plt.subplots(1, 2, figsize=(11, 4), dpi=dpi)
    for name, runs in histories.items():
        loss = np.mean([run["loss"] for run in runs], 0)
        smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
        style = "-" if "Deform" in name else "--"
        loss_ax.plot(np.arange(len(smooth)) + window, smooth, style, label=name)
        accuracy_ax.plot(runs[0]["eval_steps"], np.mean([run["accuracy"] for run in runs], 0), style,
                         marker=".", label=name)
    loss_ax.set(xlabel="step", ylabel=f"training loss ({window}-step mean)", yscale="log")
    accuracy_ax.set(xlabel="step", ylabel="test accuracy")
    accuracy_ax.axhline(1 / len(CLASSES), color="gray", lw=0.8, ls=":")
    accuracy_ax.legend(fontsize=8)
    figure.suptitle(f"mean over {len(runs)} seeds", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=dpi)
    plt.close(figure)


def table(results, command, settings):
    lines = [f"`{command}`", "", settings, "",
             "| head (RoI operator) | test accuracy, mean ± std | per seed | seconds per run |",
             "|---|---:|---|---:|"]
    for name, runs in results.items():
        final = [run["accuracy"][-1] for run in runs["histories"]]
        per_seed = ", ".join(f"{value:.3f}" for value in final)
        lines.append(f"| {name} | {np.mean(final):.3f} ± {np.std(final):.3f} | {per_seed} | "
                     f"{np.mean(runs['seconds']):.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--displacement", type=float, default=DISPLACEMENT,
                        help="largest part displacement, as a fraction of the object's frame")
    parser.add_argument("--sampling", type=int, default=0,
                        help="samples per bin side of the bilinear operators (0: adaptive, their default)")
    parser.add_argument("--gamma", type=float, default=0.1,
                        help="offset scale of the deformable operators (gamma, trans_std)")
    parser.add_argument("--test", type=int, default=1000, help="number of test objects")
    parser.add_argument("--full", action="store_true", help="2000 steps, 5 seeds, 3000 test objects")
    parser.add_argument("--only", nargs="+", choices=HEADS, default=HEADS, metavar="HEAD")
    parser.add_argument("--target", choices=("cpu", "cuda"),
                        default="cuda" if _backend.gpu_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads of the kernels (default 1: at these sizes a parallel launch "
                             "costs more than it saves)")
    parser.add_argument("--name", default="deformable_parts",
                        help="file name stem of the results under experiments/results/")
    parser.add_argument("--no-save", action="store_true", help="print the table, write nothing")
    args = parser.parse_args(argv)
    if args.full:
        args.steps, args.seeds, args.test = 2000, 5, 3000
    if args.seeds * args.steps > TEST_SEED:
        parser.error(f"seeds * steps must stay below {TEST_SEED}: training batches would reuse test seeds")
    numba.set_num_threads(args.threads)
    xp = np
    if args.target == "cuda":
        import cupy as xp

    test_images, test_rois, test_labels, test_parts = make_batch(TEST_SEED, args.test, args.displacement)
    test = (test_images, test_rois, test_labels)
    results = {}
    with tqdm(total=len(args.only) * args.seeds * args.steps, unit="step", file=sys.stderr,
              mininterval=1.0) as progress:
        for name in args.only:
            results[name] = {"histories": [], "seconds": [], "heads": []}
            for seed in range(args.seeds):
                begin = time.perf_counter()
                head, history = train(name, seed, args.steps, args.batch, args.lr, test, xp=xp,
                                      progress=progress, displacement=args.displacement,
                                      sampling=args.sampling, gamma=args.gamma)
                results[name]["seconds"].append(time.perf_counter() - begin)
                results[name]["histories"].append(history)
                results[name]["heads"].append(head)

    command = "python experiments/deformable_parts.py" + (" " + " ".join(argv if argv is not None
                                                                           else sys.argv[1:])).rstrip()
    sampling = (f"{args.sampling}x{args.sampling} samples per bin" if args.sampling else
                "adaptive sampling (ceil(bin size) per side; the deformable PS pooling: 4)")
    settings = (f"{len(CLASSES)} classes, {PART_TYPES} part types, displacement ±{args.displacement} of "
                f"the frame, {BINS}x{BINS} bins, {sampling}, "
                f"offset scale (gamma, trans_std) {args.gamma}; Adam lr {args.lr}, {args.steps} steps of "
                f"{args.batch} fresh objects, seeds 0-{args.seeds - 1}; test: {args.test} objects from "
                f"seed {TEST_SEED}. Target {args.target} ({args.threads} thread), numba_droi "
                f"{numba_droi.__version__}, {platform.machine()}.")
    markdown = table(results, command, settings)
    if "DeformRoIPoolPack" in results:
        distances = np.array([nearest_bin_distance(head, test_images, test_rois, test_parts, xp)
                              for head in results["DeformRoIPoolPack"]["heads"]])
        markdown += (f"\nDeformRoIPoolPack, test objects: mean distance from a part to the nearest bin "
                     f"centre {distances[:, 0].mean():.2f} px on the regular grid, "
                     f"{distances[:, 1].mean():.2f} px with the learned offsets (mean over seeds).\n")
    print(markdown)
    if args.no_save:
        return results
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, args.name + ".md"), "w") as file:
        file.write(markdown)
    plot_curves(os.path.join(RESULTS, args.name + "_curves.png"),
                {name: runs["histories"] for name, runs in results.items()})
    if "DeformRoIPoolPack" in results:
        plot_sampling(os.path.join(RESULTS, args.name + ".png"), results["DeformRoIPoolPack"]["heads"][0],
                      test_images, test_rois, test_labels, test_parts)
    return results


if __name__ == "__main__":
    main()
