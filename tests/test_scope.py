"""Rules are bound to the explained call: threads sharing a model, nesting, no side
effects on the model (also while a call runs, seen from another thread), and clear
errors for models that cannot be explained as they are."""
import contextvars
import threading
import warnings

import pytest
import torch
import torchvision
from torch import nn

import lrp
from lrp import crp
from lrp.canonizers import MergeBatchNorm
from lrp.composites import EpsilonGammaBox, EpsilonPlus, EpsilonPlusFlat
from lrp.deeplift import deeplift
from torch.nn.modules import module as torch_module

THREADS, CALLS = 8, 20


def model_state(model: nn.Module):
    """Everything about a model that an explanation must not change: every module's
    attributes (identity of each value), hooks, parameters and buffers (identity,
    storage, version, flags, values)."""
    modules = []
    for name, m in model.named_modules():
        attrs = {k: id(v) for k, v in vars(m).items()
                 if k not in ("_parameters", "_buffers", "_modules")}
        hooks = (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
        modules.append((name, type(m), attrs, hooks, m.training))
    tensors = [(n, id(t), t.data_ptr(), t._version, t.requires_grad, t.detach().clone())
               for n, t in [*model.named_parameters(), *model.named_buffers()]]
    return modules, tensors


def assert_same_state(before, after):
    assert before[0] == after[0]
    assert len(before[1]) == len(after[1])
    for (n, i, p, v, r, t), (n2, i2, p2, v2, r2, t2) in zip(before[1], after[1]):
        assert (n, i, p, v, r) == (n2, i2, p2, v2, r2), n
        assert torch.equal(t, t2), n


def no_global_state():
    return (not torch_module._global_forward_hooks and not torch_module._global_forward_pre_hooks
            and torch._C._len_torch_function_stack() == 0)


def in_threads(work, n=THREADS):
    errors, results = [], [None] * n

    def run(i):
        try:
            results[i] = work(i)
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval(), torch.randn(2, 3, 32, 32)


def vgg():
    torch.manual_seed(0)
    model = torchvision.models.vgg16_bn(weights=None)
    model.avgpool, model.classifier = nn.AdaptiveAvgPool2d(1), nn.Linear(512, 10)
    return model.eval(), torch.randn(2, 3, 32, 32)


def egb():
    return EpsilonGammaBox(-3.0, 3.0, canonizers=[MergeBatchNorm()])


@pytest.mark.parametrize("shared", [False, True], ids=["own composite", "shared composite"])
@pytest.mark.parametrize("build", ["resnet18", "vgg16_bn"])
def test_threads_sharing_a_model(build, shared, resnet):
    model, x = resnet if build == "resnet18" else vgg()
    reference = lrp.explain(model, x, egb()).relevance
    before = model_state(model)
    common = egb()

    def work(i):
        composite = common if shared else egb()
        return [lrp.explain(model, x, composite).relevance for _ in range(CALLS)]

    results = [r for rs in in_threads(work) for r in rs]
    assert len(results) == THREADS * CALLS
    assert max((r - reference).abs().max().item() for r in results) <= 1e-6
    assert_same_state(before, model_state(model))
    assert no_global_state()
    with torch.no_grad():  # a fresh model of the same class still works
        assert torchvision.models.resnet18(weights=None).eval()(x).shape == (2, 1000)


def test_threads_deeplift_and_crp(resnet):
    model, x = resnet
    reference = deeplift(model, x, rule="rescale").relevance
    composite = EpsilonPlusFlat(canonizers=[MergeBatchNorm()])
    conditions = [{"layer4.1.conv2": [c]} for c in range(3)]
    crp_reference = crp.attribute(model, x, composite, conditions).relevance
    before = model_state(model)

    def work(i):
        if i % 2:
            return [(deeplift(model, x).relevance - reference).abs().max().item()
                    for _ in range(CALLS)]
        return [(crp.attribute(model, x, composite, conditions).relevance
                 - crp_reference).abs().max().item() for _ in range(CALLS)]

    errors = [e for es in in_threads(work) for e in es]
    assert len(errors) == THREADS * CALLS and max(errors) <= 1e-6
    assert_same_state(before, model_state(model))
    assert no_global_state()


def test_plain_forwards_in_other_threads_are_untouched(resnet):
    """While one thread explains, another runs the model plainly: its outputs and
    gradients are bit-identical to those of a model no one explains."""
    model, x = resnet
    with torch.no_grad():
        plain = model(x)
    xg = x.clone().requires_grad_(True)
    model(xg)[:, 3].sum().backward()
    plain_grad = xg.grad.clone()
    stop = threading.Event()
    seen = []

    def explain_loop(i):
        if i == 0:
            while not stop.is_set():
                lrp.explain(model, x, egb())
            return None
        for _ in range(10):
            with torch.no_grad():
                seen.append(torch.equal(model(x), plain))
            xg = x.clone().requires_grad_(True)
            model(xg)[:, 3].sum().backward()
            seen.append(torch.equal(xg.grad, plain_grad))
        stop.set()
        return None

    in_threads(explain_loop, n=2)
    assert seen and all(seen)


def test_model_unchanged_while_a_call_runs(resnet):
    """A watcher thread compares the model's attributes, hooks, parameters and buffers
    with a snapshot, over and over, while explanations run."""
    model, x = resnet
    before = model_state(model)
    done = threading.Event()
    checks = []

    def watch():
        while not done.is_set():
            try:
                assert_same_state(before, model_state(model))
                checks.append(True)
            except AssertionError:
                checks.append(False)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for composite in (egb(), EpsilonPlusFlat(canonizers=[MergeBatchNorm()])):
            for _ in range(5):
                lrp.explain(model, x, composite)
        deeplift(model, x)
    finally:
        done.set()
        watcher.join()
    assert len(checks) > 3 and all(checks)


def test_explain_nested_in_attached_block(resnet):
    model, x = resnet
    reference = lrp.explain(model, x, egb()).relevance
    with EpsilonPlus(canonizers=[MergeBatchNorm()]).attached(model, x):
        assert torch.equal(lrp.explain(model, x, egb()).relevance, reference)
        with EpsilonPlusFlat().attached(model, x):
            assert torch.equal(lrp.explain(model, x, egb()).relevance, reference)
    assert no_global_state()


def test_attached_applies_to_this_context_only(resnet):
    """Inside ``attached()`` the rules apply in this thread and in copied contexts; a
    plain new thread sees the model unchanged."""
    model, x = resnet
    composite = EpsilonPlus(canonizers=[MergeBatchNorm()])
    expected = lrp.explain(model, x, composite, target=0).relevance
    with torch.no_grad():
        plain = model(x)

    def relevance():
        xg = x.clone().requires_grad_(True)
        model(xg)[:, 0].sum().backward()
        return xg.grad * x

    with composite.attached(model, x):
        here = relevance()
        context = contextvars.copy_context()
        copied = in_threads(lambda i: context.run(relevance), n=1)[0]
        with torch.no_grad():
            other = in_threads(lambda i: model(x), n=1)[0]
    torch.testing.assert_close(here, expected)
    torch.testing.assert_close(copied, expected)
    assert torch.equal(other, plain)


def test_nothing_left_after_an_error_in_the_forward():
    class Failing(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            torch.sigmoid(self.fc(x))
            raise RuntimeError("boom")

    model = Failing().eval()
    before = model_state(model)
    with pytest.raises(ValueError, match="boom"):
        lrp.explain(model, torch.randn(2, 4), EpsilonPlus())
    assert no_global_state()
    assert_same_state(before, model_state(model))


def test_training_mode_is_refused():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Dropout(0.5), nn.Linear(64, 2)).train()
    before = model_state(model)
    expected = r"training mode: '1' \(BatchNorm2d\), '4' \(Dropout\).*model.eval\(\)"
    with pytest.raises(ValueError, match=expected):
        lrp.explain(model, torch.randn(2, 3, 6, 6), EpsilonPlus())
    assert_same_state(before, model_state(model))
    # modules whose behaviour does not depend on the mode may stay in training mode
    relaxed = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Dropout(0.0), nn.Linear(3, 2)).train()
    lrp.explain(relaxed, torch.randn(2, 4), EpsilonPlus())


@pytest.mark.parametrize("case", ["inference_mode", "script", "compile", "export"])
def test_unsupported_models_get_one_line(case):
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).eval()
    x = torch.randn(2, 4)
    with pytest.raises((TypeError, RuntimeError)) as info, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if case == "inference_mode":
            with torch.inference_mode():
                lrp.explain(model, x, EpsilonPlus())
        elif case == "script":
            lrp.explain(torch.jit.script(model), x, EpsilonPlus())
        elif case == "compile":
            lrp.explain(torch.compile(model), x, EpsilonPlus())
        else:
            lrp.explain(torch.export.export(model, (x,)), x, EpsilonPlus())
    message = str(info.value)
    assert "\n" not in message and message.startswith("lrp cannot")
    assert no_global_state()


def test_model_returning_a_tuple_is_audited_by_innermost_module():
    class Inner(nn.Module):
        def forward(self, x):
            return torch.exp(x), x * 2  # exp: no rule

    class Outer(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.inner, self.out = nn.Linear(4, 4), Inner(), nn.Linear(4, 2)

        def forward(self, x):
            a, b = self.inner(self.fc(x))
            return self.out(a + b)

    e = lrp.explain(Outer().eval(), torch.randn(2, 4), EpsilonPlus(), audit="off")
    assert e.audit is None
    with pytest.warns(UserWarning, match="Exp in inner"):
        e = lrp.explain(Outer().eval(), torch.randn(2, 4), EpsilonPlus())
    assert [str(f) for f in e.audit.uncovered] == ["Exp in inner"]


class _TaggedParameter(nn.Parameter):
    """A Parameter subclass (as quantization libraries define): still a constant."""


def test_parameter_subclasses_are_constants_in_the_scope():
    """Parameters are found by type (a fast check), subclasses too, also in operations
    no rule concerns: ``exp(p)`` is a constant, so the product below has one
    relevance-carrying operand and keeps its full gradient (the uniform rule would
    halve it if ``exp(p)`` carried the input)."""
    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3).double()
            self.p = _TaggedParameter(torch.tensor([0.5, -2.0, 0.3], dtype=torch.float64))

        def forward(self, x):
            return (self.fc(x) + self.p) * torch.exp(self.p)

    model = Scale()
    x = torch.randn(4, 3, dtype=torch.float64)
    e = lrp.explain(model, x, lrp.composites.AttnLRP(), target=1, audit="strict")
    w, p = model.fc.weight.detach(), model.p.detach()
    torch.testing.assert_close(e.relevance, x * w[1] * torch.exp(p[1]))  # LRP-0: R_j = x_j W_1j e^p


def test_passive_rules_are_skipped_unless_recorded_or_audited():
    """rules.Gradient changes nothing, so forwards skip it -- but it still applies where
    its relevance is recorded or the audit watches the calls, with the same result."""
    from lrp import rules as R
    from lrp.composites import Composite, GlobalTypeMap
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    x = torch.randn(6, 4, dtype=torch.float64)
    composite = Composite(GlobalTypeMap([(nn.Linear, R.Gradient()), (nn.Tanh, R.Pass())]))
    applied = []
    original = R.Gradient.apply

    def counting(self, *args, **kwargs):
        applied.append(1)
        return original(self, *args, **kwargs)

    R.Gradient.apply = counting
    try:
        plain = lrp.explain(model, x, composite, target=0, audit="off")
        assert applied == []
        recorded = lrp.explain(model, x, composite, target=0, audit="off", record=["2"])
        assert len(applied) == 2
        audited = lrp.explain(model, x, composite, target=0, audit="strict")
        assert len(applied) == 4 and audited.audit.ok
    finally:
        R.Gradient.apply = original
    for e in (recorded, audited):
        torch.testing.assert_close(e.relevance, plain.relevance)
    # relevance at the last layer's output is the explained logit
    torch.testing.assert_close(recorded.layer_relevance["2"][:, 0], plain.output[:, 0])
    # Pass on tanh: the identity rule, so LRP-0 through both layers is x_j W1_ij tanh(h_i)/h_i W2_0i
    h = model[0](x).detach()
    w2 = model[2].weight.detach()[0]
    expected = x * ((torch.tanh(h) / h * w2) @ model[0].weight.detach())
    torch.testing.assert_close(plain.relevance, expected)
