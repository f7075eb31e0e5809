"""numba_droi.torch.use_for_torchvision: torchvision's own operators served by our kernels, in
torchvision.ops and inside a detection model (its losses and gradients, a scripted model's detections),
and torchvision's kernels back on leaving. Needs torchvision."""
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

import numba_droi  # noqa: E402
import numba_droi.torch as ndt  # noqa: E402
from torchvision import ops  # noqa: E402


@pytest.fixture
def counted(monkeypatch):
    """How many times each of our array-level operators that torchvision's serve ran."""
    calls = {}
    for name in ("roi_align", "roi_align_backward", "roi_pool_with_argmax", "roi_pool_backward",
                 "ps_roi_align", "ps_roi_align_backward", "ps_roi_pool", "ps_roi_pool_backward",
                 "deform_conv2d", "deform_conv2d_backward"):
        original = getattr(numba_droi.ops, name)

        def wrapper(*args, _original=original, _name=name, **kwargs):
            calls[_name] = calls.get(_name, 0) + 1
            return _original(*args, **kwargs)
        monkeypatch.setattr(numba_droi.ops, name, wrapper)
    return calls


def outputs_and_gradients(call, tensors):
    for t in tensors:
        t.grad = None
    output = call()
    output = output[0] if isinstance(output, tuple) else output
    output.backward(torch.randn(output.shape, generator=torch.Generator().manual_seed(1), dtype=output.dtype))
    return [output.detach().clone()] + [t.grad.clone() for t in tensors]


BOXES = torch.tensor([[0, 1.3, 0.6, 13.1, 11.7], [1, 4.2, 2.5, 15.6, 14.1], [1, 0.4, 3.3, 9.8, 9.2]],
                     dtype=torch.float64)


@pytest.mark.parametrize("name, call", [
    ("roi_align", lambda x: ops.roi_align(x, BOXES, (3, 2), 0.5, 2, True)),
    ("roi_pool_with_argmax", lambda x: ops.roi_pool(x, BOXES, (3, 2), 0.5)),
    ("ps_roi_align", lambda x: ops.ps_roi_align(x, BOXES, (2, 2), 0.5, 2)),
    ("ps_roi_pool", lambda x: ops.ps_roi_pool(x, BOXES, (2, 2), 0.5)),
])
def test_torchvision_ops_run_on_our_kernels_with_torchvisions_results(counted, name, call):
    x = torch.randn(2, 8, 12, 14, dtype=torch.float64, generator=torch.Generator().manual_seed(0),
                    requires_grad=True)
    theirs = outputs_and_gradients(lambda: call(x), [x])
    assert not counted
    with ndt.use_for_torchvision():
        ours = outputs_and_gradients(lambda: call(x), [x])
    assert counted[name] == 1 and sum(counted.values()) == 2  # the forward and the backward
    again = outputs_and_gradients(lambda: call(x), [x])
    assert sum(counted.values()) == 2  # torchvision's kernels again
    for a, b, c in zip(theirs, ours, again):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(c, a, rtol=0, atol=0)


@pytest.mark.parametrize("with_mask", [False, True])
def test_deform_conv2d_runs_on_our_kernels_with_torchvisions_results(counted, with_mask):
    generator = torch.Generator().manual_seed(2)
    input = torch.randn(1, 4, 6, 7, dtype=torch.float64, generator=generator, requires_grad=True)
    weight = torch.randn(6, 2, 3, 3, dtype=torch.float64, generator=generator, requires_grad=True)
    offset = (torch.rand(1, 36, 6, 7, dtype=torch.float64, generator=generator) - 0.5).requires_grad_()
    mask = torch.rand(1, 18, 6, 7, dtype=torch.float64, generator=generator).requires_grad_()
    bias = torch.randn(6, dtype=torch.float64, generator=generator, requires_grad=True)
    tensors = [input, weight, offset, bias] + ([mask] if with_mask else [])

    def call():
        return ops.deform_conv2d(input, offset, weight, bias, padding=1, mask=mask if with_mask else None)
    theirs = outputs_and_gradients(call, tensors)
    with ndt.use_for_torchvision():
        ours = outputs_and_gradients(call, tensors)
    assert counted == {"deform_conv2d": 1, "deform_conv2d_backward": 1}
    for a, b in zip(theirs, ours):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10)


def detector():
    torch.manual_seed(0)
    return torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, num_classes=3, min_size=160, max_size=160)


def images_and_targets():
    generator = torch.Generator().manual_seed(3)
    images = [torch.rand(3, 160, 160, generator=generator), torch.rand(3, 144, 160, generator=generator)]
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 90.0, 120.0], [50.0, 40.0, 150.0, 100.0]]),
                "labels": torch.tensor([1, 2])},
               {"boxes": torch.tensor([[30.0, 30.0, 80.0, 130.0]]), "labels": torch.tensor([2])}]
    return images, targets


def losses_and_gradients(model):
    images, targets = images_and_targets()
    model.train()
    model.zero_grad()
    torch.manual_seed(4)  # the samplers of proposals and anchors
    losses = model(images, targets)
    sum(losses.values()).backward()
    return ({name: value.detach() for name, value in losses.items()},
            {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None})


def test_a_detection_model_trains_on_our_kernels_with_torchvisions_losses_and_gradients(counted):
    model = detector()
    their_losses, their_grads = losses_and_gradients(model)
    with ndt.use_for_torchvision():
        our_losses, our_grads = losses_and_gradients(model)
    assert counted["roi_align"] > 0 and counted["roi_align_backward"] > 0  # MultiScaleRoIAlign's
    for name in their_losses:
        torch.testing.assert_close(our_losses[name], their_losses[name], rtol=1e-5, atol=1e-6)
    assert their_grads.keys() == our_grads.keys()
    for name in their_grads:
        torch.testing.assert_close(our_grads[name], their_grads[name], rtol=1e-3, atol=1e-5)


def test_a_scripted_model_detects_on_our_kernels_as_on_torchvisions(counted):
    model = torch.jit.script(detector().eval())
    images, _ = images_and_targets()
    with torch.no_grad():
        theirs = model(images)[1]
        serving = ndt.use_for_torchvision()  # a plain call serves until restore()
        try:
            ours = model(images)[1]
        finally:
            serving.restore()
        served = dict(counted)
        again = model(images)[1]
    assert served["roi_align"] > 0 and counted == served  # ours while served, torchvision's after
    for a, b in zip(theirs, again):
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=0, atol=0)
    for a, b in zip(theirs, ours):
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-5)


def test_a_compiled_function_runs_on_our_kernels(counted):
    x = torch.randn(2, 8, 12, 14, generator=torch.Generator().manual_seed(5), requires_grad=True)
    boxes = BOXES.float()
    compiled = torch.compile(lambda x: ops.roi_align(x, boxes, 3, 0.5, 2, True).square().sum(),
                             backend="aot_eager", fullgraph=True)
    expected = ops.roi_align(x, boxes, 3, 0.5, 2, True).square().sum()
    with ndt.use_for_torchvision():
        value = compiled(x)
        value.backward()
    assert counted == {"roi_align": 1, "roi_align_backward": 1}
    torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-6)
