"""experiments/deformable_parts.py: its dataset is deterministic and puts the parts where the labels
say, a few steps of training lower a deformable head's loss and move its offsets, and the figure
plots the positions deform_roi_pool really samples (checked against the formula of docs/operators.md
and against the operator itself on a coordinate ramp)."""
import importlib.util
import os

import numpy as np
import pytest

import numba_droi

pytest.importorskip("tqdm")
pytest.importorskip("matplotlib")

PATH = os.path.join(os.path.dirname(__file__), os.pardir, "experiments", "deformable_parts.py")
spec = importlib.util.spec_from_file_location("deformable_parts", PATH)
parts = importlib.util.module_from_spec(spec)
spec.loader.exec_module(parts)


def test_dataset_is_deterministic_per_seed():
    first, again, other = parts.make_batch(3, 8), parts.make_batch(3, 8), parts.make_batch(4, 8)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], other[0])
    assert first[0].shape == (8, parts.PART_TYPES, parts.SIZE, parts.SIZE) and first[0].dtype == np.float32
    assert first[1].shape == (8, 5) and first[1].dtype == np.float32
    np.testing.assert_array_equal(first[1][:, 0], np.arange(8))


def test_every_part_is_inside_its_box_and_painted_in_its_labels_channel():
    images, rois, labels, centres = parts.make_batch(5, 200)
    low, high = rois[:, None, 1:3], rois[:, None, 3:5]
    assert np.all((centres >= low - 1e-4) & (centres <= high + 1e-4))
    pixel = np.floor(centres).astype(int)  # pixel i covers [i, i + 1)
    for slot in range(len(parts.SLOTS)):
        channel = parts.CLASSES[labels, slot]
        value = images[np.arange(200), channel, pixel[:, slot, 1], pixel[:, slot, 0]]
        assert np.all(value > 0.5), value.min()  # a part peaks at 1, the noise has std 0.1
    assert set(labels) == set(range(len(parts.CLASSES)))


def test_without_displacement_the_parts_sit_at_their_slots_within_the_box_jitter():
    _, rois, _, centres = parts.make_batch(6, 200, displacement=0.0)
    box_start, box_size = rois[:, None, 1:3], rois[:, None, 3:5] - rois[:, None, 1:3]
    relative = (centres - box_start) / box_size
    assert np.abs(relative - parts.SLOTS).max() < 0.2
    _, _, _, moved = parts.make_batch(6, 200)
    assert np.abs(moved - centres).max() > 2  # the default deformation moves parts by pixels


def test_a_short_training_run_lowers_the_loss_and_learns_offsets():
    head, history = parts.train("DeformRoIPoolPack", seed=0, steps=40, batch=16, lr=1e-2)
    loss = np.array(history["loss"])
    assert loss[-10:].mean() < 0.9 * loss[:5].mean(), loss
    last = head.pool.offset_fc[4]
    assert np.abs(last.weight.data).max() > 0  # zero-initialised: training moved the offsets


def perturbed_pack_head(seed=1):
    """A DeformRoIPoolPack head whose offset predictor gives non-zero, smallish offsets."""
    head = parts.Head("DeformRoIPoolPack", seed=seed)
    last = head.pool.offset_fc[4]
    rng = np.random.default_rng(seed)
    last.weight.data[...] = rng.normal(0, 0.05, last.weight.shape)
    last.bias.data[...] = rng.normal(0, 0.5, last.bias.shape)
    return head


def test_the_figure_plots_the_positions_deform_roi_pool_samples(tmp_path):
    head = perturbed_pack_head()
    images, rois, labels, centres = parts.make_batch(7, 4)
    path = tmp_path / "figure.png"
    regular, deformed = parts.plot_sampling(path, head, images, rois, labels, centres, columns=4, dpi=50)

    with open(path, "rb") as file:
        assert file.read(8) == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image
    assert matplotlib.image.imread(path).shape[:2] == (round(3.3 * 50), 3 * 4 * 50)

    # docs/operators.md, deform_roi_pool: aligned RoI Align geometry, x1' = x1 * scale - 0.5,
    # bin_w = roi_w / PW; the bin (and so the centre of its samples) moves by gamma * roi_w *
    # offset[k, 0] in x.
    pack = head.pool
    with numba_droi.no_grad():
        offset = pack._offset(pack._pooled_rows(images, rois)).numpy().astype(np.float64)
    for k in range(4):
        x1, y1, x2, y2 = rois[k, 1:].astype(np.float64)
        bin_w, bin_h = (x2 - x1) / 3, (y2 - y1) / 3
        for ph in range(3):
            for pw in range(3):
                x = x1 - 0.5 + (pw + 0.5) * bin_w
                y = y1 - 0.5 + (ph + 0.5) * bin_h
                np.testing.assert_allclose(regular[k, ph, pw], (x, y), atol=1e-9)
                np.testing.assert_allclose(
                    deformed[k, ph, pw],
                    (x + 0.1 * (x2 - x1) * offset[k, 0, ph, pw], y + 0.1 * (y2 - y1) * offset[k, 1, ph, pw]),
                    atol=1e-9)
    assert np.abs(deformed - regular).max() > 0.5  # the offsets are not trivially zero

    # The operator itself: on a map whose channels are the x and the y index, bilinear sampling is
    # exact, so each bin's output is the mean of its sample positions, i.e. the deformed bin centre,
    # wherever all the bin's samples lie inside [0, SIZE - 1] (outside, rule B1 clamps).
    ramp = np.stack(np.meshgrid(np.arange(parts.SIZE), np.arange(parts.SIZE)), 0)[None]
    ramp = np.repeat(ramp.astype(np.float64), 4, axis=0)
    mean_sample = numba_droi.deform_roi_pool(ramp, rois.astype(np.float64), offset, pack.output_size,
                                             pack.spatial_scale, pack.sampling_ratio, pack.gamma)
    half_bin = ((rois[:, 3:5] - rois[:, 1:3]) / 6)[:, None, None]
    inside = np.all((deformed - half_bin >= 0) & (deformed + half_bin <= parts.SIZE - 1), axis=-1)
    assert inside.sum() >= 30, inside.sum()
    np.testing.assert_allclose(np.moveaxis(mean_sample, 1, -1)[inside], deformed[inside], atol=1e-5)


def test_the_curves_figure_is_written(tmp_path):
    history = {"loss": list(np.linspace(2, 1, 40)), "eval_steps": [20, 40], "accuracy": [0.3, 0.5]}
    path = tmp_path / "curves.png"
    parts.plot_curves(path, {"RoI Align": [history, history]}, window=5, dpi=40)
    import matplotlib.image
    assert matplotlib.image.imread(path).shape[:2] == (4 * 40, 11 * 40)


def test_the_readme_shows_the_committed_table():
    results = os.path.join(os.path.dirname(PATH), "results", "deformable_parts.md")
    with open(results) as file:
        rows = [line for line in file.read().splitlines() if line.startswith("|")]
    with open(os.path.join(os.path.dirname(PATH), os.pardir, "README.md")) as file:
        readme = file.read()
    assert rows and all(row in readme for row in rows)


def test_nearest_bin_distance_measures_parts_against_bin_centres():
    images, rois, labels, centres = parts.make_batch(8, 6)
    untrained = parts.Head("DeformRoIPoolPack", seed=0)  # zero offsets: both grids are the regular one
    regular, learned = parts.nearest_bin_distance(untrained, images, rois, centres)
    assert regular == learned
    x1, y1, x2, y2 = rois[0, 1:].astype(np.float64)
    grid = [(x1 - 0.5 + (j + 0.5) * (x2 - x1) / 3, y1 - 0.5 + (i + 0.5) * (y2 - y1) / 3)
            for i in range(3) for j in range(3)]
    one, _ = parts.nearest_bin_distance(untrained, images[:1], rois[:1], centres[:1])
    expected = np.mean([min(np.hypot(*(np.array(g) - (c - 0.5))) for g in grid) for c in centres[0]])
    assert one == pytest.approx(expected, rel=1e-6)
