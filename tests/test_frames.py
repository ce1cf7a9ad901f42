"""Results as users want them: Explanation.numpy(), Explanation.to_frame() and names."""
import builtins

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from lrp import demo, gradients
from lrp.kernel_shap import kernel_shap

CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@pytest.fixture(scope="module")
def tabular():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    x = torch.randn(6, 4)
    return model, x


def pivot(frame, index, shape):
    """The frame back to an array: rows shuffled, then sorted by ``index`` (named
    columns sort by their categories, i.e. in input order) and reshaped."""
    shuffled = frame.sample(frac=1.0, random_state=0)
    return shuffled.set_index(index)["value"].sort_index().to_numpy().reshape(shape)


def test_numpy_is_the_relevance():
    x, _ = demo.demo_inputs(2)
    e = gradients.gradient(demo.load_demo_model(), x)
    array = e.numpy()
    assert isinstance(array, np.ndarray) and array.dtype == np.float32
    np.testing.assert_array_equal(array, e.relevance.numpy())
    e.relevance = e.relevance.to(torch.bfloat16)
    assert e.numpy().dtype == np.float32


def test_tabular_frame_has_names_and_round_trips(tabular):
    model, x = tabular
    e = kernel_shap(model, x, background=x, n_samples=14).named(
        ["age", "income", "debt", "score"], ["low", "mid", "high"])
    frame = e.to_frame()
    assert list(frame.columns) == ["sample", "target", "feature", "value"]
    assert len(frame) == 6 * 4 and frame.attrs["method"] == "KernelSHAP"
    assert list(frame["feature"].cat.categories) == ["age", "income", "debt", "score"]
    first = frame[frame["sample"] == 2]
    assert first["target"].astype(str).tolist() == [["low", "mid", "high"][int(e.target[2])]] * 4
    assert first["feature"].astype(str).tolist() == ["age", "income", "debt", "score"]
    np.testing.assert_array_equal(first["value"].to_numpy(), e.relevance[2].numpy())
    np.testing.assert_array_equal(pivot(frame, ["sample", "feature"], (6, 4)), e.numpy())
    # the innsight style: a pivot table, samples by features
    table = frame.pivot_table(index="sample", columns="feature", values="value", observed=True)
    np.testing.assert_array_equal(table.to_numpy(), e.numpy())


def test_image_frame_with_several_targets_round_trips():
    x, _ = demo.demo_inputs(3)
    targets = torch.tensor([[0, 4], [1, 2], [9, 3]])
    e = gradients.gradient_x_input(demo.load_demo_model(), x, target=targets)
    rows = [f"r{i}" for i in range(32)]
    named = e.named([["gray"], rows, None], CLASSES)
    frame = named.to_frame()
    assert list(frame.columns) == ["sample", "target", "target_index", "channel", "row",
                                   "column", "value"]
    assert len(frame) == 3 * 2 * 32 * 32
    index = ["sample", "target_index", "channel", "row", "column"]
    np.testing.assert_array_equal(pivot(frame, index, e.relevance.shape), e.numpy())
    at = frame[(frame["sample"] == 2) & (frame["target_index"] == 0) & (frame["row"] == "r5")
               & (frame["column"] == 7)]
    assert at["target"].astype(str).tolist() == ["nine"]
    assert at["value"].item() == e.relevance[2, 0, 0, 5, 7].item()
    # without names: plain indices, same values
    plain = e.to_frame()
    assert plain["row"].dtype.kind == "i" and plain["target"].tolist()[:1] == [0]
    np.testing.assert_array_equal(plain["value"].to_numpy(), frame["value"].to_numpy())


def test_one_dimensional_signals_frame_columns():
    model = nn.Sequential(nn.Conv1d(2, 3, 3), nn.Flatten(), nn.Linear(3 * 8, 2)).eval()
    e = gradients.gradient(model, torch.randn(2, 2, 10))
    frame = e.to_frame()
    assert list(frame.columns) == ["sample", "target", "channel", "position", "value"]
    np.testing.assert_array_equal(pivot(frame, ["sample", "channel", "position"], (2, 2, 10)),
                                  e.numpy())


def test_named_checks_the_names(tabular):
    model, x = tabular
    e = gradients.gradient(model, x)
    with pytest.raises(ValueError, match="got 3 input names for 4 entries"):
        e.named(["a", "b", "c"])
    with pytest.raises(ValueError, match="got 2 output names for a model with 3 outputs"):
        e.named(output_names=["a", "b"])
    with pytest.raises(ValueError, match="unique; repeated: a"):
        e.named(["a", "a", "b", "c"])
    with pytest.raises(TypeError, match="sequence"):
        e.named("abcd")
    images = gradients.gradient(demo.load_demo_model(), demo.demo_inputs(1)[0])
    with pytest.raises(ValueError, match="one entry per dimension"):
        images.named(["a", "b"])
    named = e.named(["a", "b", "c", "d"])
    assert named.input_names == (("a", "b", "c", "d"),) and named.output_names is None
    assert e.input_names is None  # a copy
    both = named.named(output_names=[0, 1, 2])
    assert both.input_names == named.input_names and both.output_names == ("0", "1", "2")


def test_missing_pandas_says_how_to_install(tabular, monkeypatch):
    model, x = tabular
    e = gradients.gradient(model, x)
    real_import = builtins.__import__

    def no_pandas(name, *args, **kwargs):
        if name == "pandas" or name.startswith("pandas."):
            raise ImportError("No module named 'pandas'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pandas)
    with pytest.raises(ImportError, match=r"pip install 'lrp\[frames\]'"):
        e.to_frame()
    assert pd is not None
