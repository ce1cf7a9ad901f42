"""The exact shortcuts of lrp.evaluate against the straightforward computation written
out here: every perturbed input of every sample through the model on its own.

A perturbation step (or a faithfulness-correlation subset) that changes no input value
-- black filled over black background -- is not run again: it gets the output of the
input it equals.  With one row per forward (``batch_size=1``, as the loops here) the
curves are bit-identical; with larger chunks they differ only by the rounding that
another batch composition brings.  The forwards saved are counted."""
import pytest
import torch

from lrp import evaluate, gradients
from lrp.batching import run_chunked
from lrp.demo import demo_inputs, load_demo_model
from lrp.evaluate import features


@pytest.fixture(scope="module")
def digits():
    model = load_demo_model()
    x, labels = demo_inputs(3)
    relevance = gradients.gradient_x_input(model, x, target=labels).relevance
    return model, x, labels, relevance


class RowCounter:
    """Counts the rows that go through the model (a forward pre-hook, removed after)."""

    def __init__(self, model):
        self.rows = 0
        self.handle = model.register_forward_pre_hook(self.count)

    def count(self, module, args):
        self.rows += args[0].shape[0]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def straightforward_curves(model, x, relevance, labels, patch, order):
    """Region perturbation with the black fill, one sample and one step at a time: the
    curves and how many (sample, step) inputs differ from the step before."""
    curves, changed = [], 0
    h, w = x.shape[2:]
    for i in range(x.shape[0]):
        pixel = relevance[i].sum(0)
        patches = [(pixel[r:r + patch, c:c + patch].sum().item(), (r, c))
                   for r in range(0, h, patch) for c in range(0, w, patch)]
        sign = -1 if order == "morf" else 1
        ranked = [rc for _, rc in sorted(patches, key=lambda s: sign * s[0])]  # stable
        z = x[i:i + 1].clone()
        with torch.no_grad():
            values = [model(z)[0, labels[i]].item()]
            for r, c in ranked:
                before = z.clone()
                z[..., r:r + patch, c:c + patch] = x[i].min()
                changed += int(not torch.equal(z, before))
                values.append(model(z)[0, labels[i]].item())
        curves.append(values)
    return torch.tensor(curves), changed


@pytest.mark.parametrize("order", ["morf", "lerf"])
def test_unchanged_steps_are_not_run_and_the_curves_stay_exact(digits, order):
    model, x, labels, r = digits
    expected, changed = straightforward_curves(model, x, r, labels, 4, order)
    assert changed < 3 * 64  # black patches over black background exist on the digits
    with RowCounter(model) as counter:
        one_by_one = evaluate.pixel_flipping(model, x, r, labels, order=order, patch_size=4,
                                             fill="min", batch_size=1)
    assert torch.equal(one_by_one.curves[order], expected.to(one_by_one.curves[order].dtype))
    assert counter.rows == x.shape[0] + changed  # the unperturbed batch, then the changes only
    chunked = evaluate.pixel_flipping(model, x, r, labels, order=order, patch_size=4, fill="min",
                                      batch_size=256)
    assert torch.allclose(chunked.curves[order], expected, rtol=1e-6, atol=1e-5)


def test_pixels_per_step_skip_only_steps_without_a_change(digits):
    """16 pixels per step: a step is skipped only when all 16 are black already."""
    model, x, labels, r = digits
    fill = features.fill_values(x, "min", None)
    rank = features.ranks(r.sum(1).flatten(1), "morf").reshape(x.shape[0], 1, 32, 32)
    inputs = [x] + [torch.where(rank < 16 * k, fill, x) for k in range(1, 65)]
    with torch.no_grad():
        expected = torch.stack([model(z).gather(1, labels[:, None])[:, 0] for z in inputs], dim=1)
    # a skipped step's value is the last value computed, not a recomputation
    same = torch.stack([(a == b).flatten(1).all(1) for a, b in zip(inputs[1:], inputs[:-1])], dim=1)
    with RowCounter(model) as counter:
        result = evaluate.pixel_flipping(model, x, r, labels, patches_per_step=16, fill="min")
    assert counter.rows == x.shape[0] + int((~same).sum())
    assert torch.allclose(result.curves["morf"], expected, rtol=1e-6, atol=1e-5)


def test_subsets_that_change_nothing_are_not_run(digits):
    model, x, labels, r = digits
    g = torch.Generator().manual_seed(4)
    subsets = torch.stack([torch.stack([torch.randperm(1024, generator=g)[:2] for _ in range(30)])
                           for _ in range(3)])
    drops, sums, changed = torch.zeros(3, 30), torch.zeros(3, 30), 0
    with torch.no_grad():
        for i in range(3):
            base = model(x[i:i + 1])[0, labels[i]]
            for k, s in enumerate(subsets[i]):
                z = x[i:i + 1].clone().flatten()
                changed += int(bool((z[s] != x[i].min()).any()))
                z[s] = x[i].min()
                drops[i, k] = base - model(z.reshape(1, 1, 32, 32))[0, labels[i]]
                sums[i, k] = r[i].flatten()[s].sum()
    assert changed < 3 * 30
    with RowCounter(model) as counter:
        result = evaluate.faithfulness_correlation(model, x, r, labels, subsets=subsets, fill="min",
                                                   batch_size=1)
    assert counter.rows == 3 + changed
    assert torch.equal(result.curves["output_drop"], drops)
    assert torch.equal(result.curves["relevance_sum"], sums)
    assert torch.equal(result.scores, evaluate.pearson(sums, drops))


def test_run_chunked_streams_partial_passes():
    """Passes of only some samples are packed into full chunks; each value reaches its
    pass and sample."""
    t = torch.arange(5)
    chunks, got = [], {}

    def make_pass(p):
        samples = torch.tensor([s for s in range(5) if (s + p) % 3])
        return torch.full((len(samples), 2), float(p)) + samples[:, None], samples

    def evaluate_rows(rows, targets):
        chunks.append(rows.shape[0])
        return rows[:, 0] * 10 + targets

    def consume(p, a, b, values):
        for sample, v in zip(make_pass(p)[1][a:b].tolist(), values.tolist()):
            got[(p, sample)] = v

    run_chunked(make_pass, 4, t, evaluate_rows, consume, 3, False, "test")
    expected = {(p, s): (p + s) * 10 + s for p in range(4) for s in range(5) if (s + p) % 3}
    assert got == expected and chunks == [3] * (len(expected) // 3) + [len(expected) % 3] * (
        len(expected) % 3 > 0)
