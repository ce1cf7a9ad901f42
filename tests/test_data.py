"""Dataset-scale attribution and reference collection (lrp.data, lrp.crp.collect_references).

Two gloo processes on localhost (started here with torch.multiprocessing) must write
the same stores as one process, bit for bit in float64; a run killed with SIGKILL
and resumed, and a run stopped by a failing rank and resumed, must end with the
stores of an uninterrupted run.  The single-process stores are checked against
oracles: ``lrp.explain`` and the library methods called directly, and a brute-force
top-n over all samples.
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image

import lrp
from lrp import cli, crp, data
from lrp.composites import EpsilonPlus
from lrp.crp.maximization import MODES
from lrp.data import AttributionStore, StoreMismatch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import distributed_jobs as jobs  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ARRAYS = ("relevance", "output", "target", "label")


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Everything that needs other processes, started at once: two gloo ranks running
    every job of ``distributed_jobs.JOBS``, and two single-process runs killed with
    SIGKILL; meanwhile the single-process stores are computed here."""
    out = tmp_path_factory.mktemp("ranks")
    single = tmp_path_factory.mktemp("single")
    killed = tmp_path_factory.mktemp("killed")
    kills = {what: subprocess.Popen([sys.executable, str(HERE / "distributed_jobs.py"), what,
                                     str(killed / what)], env=_env(), stderr=subprocess.PIPE,
                                    text=True)
             for what in ("refs", "attr")}
    ranks = mp.start_processes(jobs.worker, args=(str(out), 2, list(jobs.JOBS)), nprocs=2,
                               join=False, start_method="spawn")
    for name in ("refs37", "attr37", "refs5", "attr5"):
        jobs.JOBS[name](single)
    codes = {}
    for what, proc in kills.items():
        proc.communicate(timeout=120)
        codes[what] = proc.returncode
    deadline = time.monotonic() + 180
    for proc in ranks.processes:
        proc.join(max(1.0, deadline - time.monotonic()))
    exits = [proc.exitcode for proc in ranks.processes]
    for proc in ranks.processes:
        if proc.is_alive():
            proc.kill()
    outcomes = [json.loads((out / f"rank{r}.json").read_text()) if (out / f"rank{r}.json").exists()
                else {} for r in range(2)]
    return {"out": out, "single": single, "killed": killed, "kill_codes": codes,
            "exits": exits, "outcomes": outcomes}


def same_attributions(a, b):
    a, b = AttributionStore(a), AttributionStore(b)
    assert a.complete and b.complete and a.size == b.size
    for name in ARRAYS:
        x, y = np.asarray(getattr(a, name)), np.asarray(getattr(b, name))
        assert x.dtype == y.dtype and x.shape == y.shape, name
        assert np.array_equal(x, y), name  # bit-identical


def same_references(a, b):
    a, b = crp.References.load(a), crp.References.load(b)
    assert a.layers == b.layers
    for mode in MODES:
        for layer in a.layers:
            for part in ("values", "indices", "targets"):
                x, y = getattr(a, part)[mode][layer], getattr(b, part)[mode][layer]
                assert x.dtype == y.dtype and torch.equal(x, y), (mode, layer, part)


# ------------------------------------------------------------------------ sharding
def test_shard_splits_any_size_over_any_world():
    for n in range(0, 13):
        items = list(range(n))
        for world in range(1, 6):
            parts = [data.shard(items, r, world) for r in range(world)]
            assert sorted(sum(parts, [])) == items
            assert max(map(len, parts)) - min(map(len, parts)) <= 1
            assert all(part == sorted(part) for part in parts)
            if n < world:
                assert parts[-1] == []  # an empty shard
    with pytest.raises(ValueError):
        data.shard([1, 2], 2, 2)


# ------------------------------------------------------------------------ several ranks
def test_two_ranks_write_the_single_process_stores(runs):
    """37 samples in chunks of 16 (16, 16, 5: two chunks on rank 0, one on rank 1) and
    5 samples (one chunk: rank 1's shard is empty)."""
    outcomes = runs["outcomes"]
    for name in ("refs37", "attr37", "refs5", "attr5"):
        for rank in range(2):
            assert outcomes[rank].get(name, {}).get("ok"), (rank, outcomes[rank].get(name))
    for n in (37, 5):
        same_attributions(runs["out"] / f"attr{n}", runs["single"] / f"attr{n}")
        same_references(runs["out"] / f"refs{n}", runs["single"] / f"refs{n}")
    store = AttributionStore(runs["out"] / "attr37")
    assert store.store.chunk_size == 16 and store.store.done() == [0, 1, 2]
    assert store.relevance.dtype == np.float64


def test_a_failing_rank_stops_the_others(runs):
    rank0, rank1 = (o["fail"] for o in runs["outcomes"])
    assert rank1["error"] == "ValueError" and rank1["message"] == "broken sample 28"
    assert rank0["error"] == "RankError"
    assert "rank 1 failed: ValueError: broken sample 28" in rank0["message"]
    assert rank0["seconds"] < 30
    # rank 0 finished chunk 0; chunk 1 was half written by rank 1 and is not taken
    path = runs["out"] / "fail"
    store = AttributionStore(path)
    assert not store.complete and store.store.done() == [0]
    assert not any(p.name.startswith(".") for p in (path / "chunks").iterdir())
    with pytest.raises(KeyError, match="resume"):
        store.relevance[28]
    with pytest.raises(ValueError, match="incomplete"):
        store.class_means()
    # resumed in one process with the data fixed: the uninterrupted store
    resumed = jobs.attributions(jobs.Digits(37), path, data_key="digits-37")
    assert resumed.computed == 37 - 16
    same_attributions(path, runs["single"] / "attr37")


def test_a_rank_that_dies_stops_the_others(runs):
    assert runs["exits"][1] == 3 and "die" not in runs["outcomes"][1]
    rank0 = runs["outcomes"][0]["die"]
    assert rank0["error"] == "RankError" and rank0["seconds"] < 60
    assert "lost contact with the other ranks" in rank0["message"]
    with pytest.raises(ValueError, match="incomplete"):
        crp.References.load(runs["out"] / "die")


# ------------------------------------------------------------------------ killed runs
@pytest.mark.parametrize("what", ["attr", "refs"])
def test_a_killed_run_resumes_to_the_uninterrupted_store(runs, what):
    assert runs["kill_codes"][what] == -9
    path = runs["killed"] / what
    store = data.Store.open(path)
    assert not store.complete and store.done() == [0]
    leftovers = [p for p in (path / "chunks").iterdir() if p.name.startswith(".")]
    assert len(leftovers) == 1  # the half-written chunk 1
    if what == "attr":
        resumed = jobs.attributions(jobs.Digits(37), path, data_key="digits-37")
        assert resumed.computed == 37 - 16
        same_attributions(path, runs["single"] / "attr37")
    else:
        resumed = jobs.references(jobs.Digits(37), path, data_key="digits-37")
        assert resumed.computed == 37 - 16 and not resumed.loaded
        same_references(path, runs["single"] / "refs37")
    assert not any(p.name.startswith(".") for p in (path / "chunks").iterdir())


# ------------------------------------------------------------------------ oracles
def test_attribution_store_is_lrp_explain(runs):
    model, x, y = jobs.model(), jobs.Digits(37).x, jobs.Digits(37).y
    oracle = lrp.explain(model, x, jobs.composite(), y)
    store = AttributionStore(runs["single"] / "attr37")
    np.testing.assert_allclose(np.asarray(store.relevance), oracle.relevance.numpy(),
                               rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(np.asarray(store.output), model(x).detach().numpy(), rtol=1e-12)
    assert np.array_equal(np.asarray(store.target), y.numpy())
    assert np.array_equal(np.asarray(store.label), y.numpy())
    # reading by dataset index across chunks
    r = oracle.relevance.numpy()
    np.testing.assert_allclose(store.relevance[17], r[17], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(store.relevance[-1], r[-1], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(store.relevance[10:20], r[10:20], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(store.relevance[[36, 0, 16]], r[[36, 0, 16]], rtol=1e-9,
                               atol=1e-12)
    with pytest.raises(IndexError):
        store.relevance[37]
    # per-class means straight from the store
    means = store.class_means()
    labels = y.numpy()
    assert means.classes.tolist() == sorted(set(labels.tolist()))
    for k, cls in enumerate(means.classes):
        assert means.counts[k] == (labels == cls).sum()
        np.testing.assert_allclose(means[cls], r[labels == cls].mean(0), rtol=1e-9, atol=1e-12)
    pictures = store.mean_heatmaps(cmap="coldnhot")
    assert sorted(pictures) == means.classes.tolist()
    assert pictures[0].size == (32, 32)


def test_references_are_the_brute_force_top_n(runs):
    """Against explain's recorded layer relevance and the canonized activations of all
    samples at once: values close, ties (equal values) in index order."""
    model, digits = jobs.model(), jobs.Digits(37)
    refs = crp.References.load(runs["single"] / "refs37")
    e = lrp.explain(model, digits.x, jobs.composite(), digits.y, record=jobs.LAYERS)
    with torch.no_grad():
        acts = {"features.4": model.features[:6](digits.x), "features.8": model.features[:10](digits.x)}
    for layer in jobs.LAYERS:
        scores = {"relevance": e.layer_relevance[layer].sum((2, 3)).T,
                  "activation": acts[layer].amax((2, 3)).T}
        for mode in MODES:
            s = scores[mode]
            top = s.sort(dim=1, descending=True).values[:, :jobs.N_REFS]
            values, idx = refs.values[mode][layer], refs.indices[mode][layer]
            torch.testing.assert_close(values, top, rtol=1e-9, atol=1e-12)
            torch.testing.assert_close(s.gather(1, idx), values, rtol=1e-9, atol=1e-12)
            ties = values[:, 1:] == values[:, :-1]
            assert bool((idx[:, 1:][ties] > idx[:, :-1][ties]).all())
            assert torch.equal(refs.targets[mode][layer], digits.y[idx])


def test_top_n_merge_is_exact_in_any_order():
    """Candidates with many ties, delivered in chunks of any size and order, give the
    top-n of numpy's lexsort (value descending, then index ascending)."""
    from lrp.crp.maximization import _merge
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 6, (7, 90), generator=g).double()  # 7 concepts, many ties
    scores[2] = 0.0                                              # a concept that is all ties
    n = 12
    order = np.lexsort((np.arange(90)[None].repeat(7, 0), -scores.numpy()), axis=1)[:, :n]
    for chunk in (1, 7, 16, 90):
        starts = list(range(0, 90, chunk))
        for perm in (starts, starts[::-1], sorted(starts, key=lambda a: (a * 37) % 11)):
            state = {}
            for a in perm:
                idx = torch.arange(a, min(90, a + chunk))
                _merge(state, "l", scores[:, idx], idx.expand(7, -1), idx.expand(7, -1) % 10, n)
            values, indices, targets = state["l"]
            assert indices.tolist() == order.tolist(), (chunk, perm[:3])
            assert torch.equal(values, scores.gather(1, indices)) and torch.equal(targets,
                                                                                  indices % 10)
    state = {}
    _merge(state, "l", scores[:, :3], torch.arange(3).expand(7, -1), torch.zeros(7, 3).long(), 5)
    assert state["l"][1][:, 3:].eq(-1).all() and state["l"][0][:, 3:].eq(float("-inf")).all()


@pytest.mark.parametrize("method", ["smoothgrad", "deeplift", "crp"])
def test_other_methods_are_the_library_methods_batch_by_batch(tmp_path, method):
    model, digits = jobs.model(), jobs.Digits(21)
    conditions = [{"features.8": [3]}, {"features.8": [5], "y": 1}]
    kwargs = {"smoothgrad": dict(method="smoothgrad", options={"n": 3, "seed": 7}),
              "deeplift": dict(method="deeplift", options={"reference": jobs.LOW}),
              "crp": dict(method=jobs.composite(), conditions=conditions)}[method]
    store = data.attribute_dataset(model, digits, store=tmp_path / "s", target="label",
                                   batch_size=8, checkpoint_every=1, progress=False, **kwargs)
    for start in range(0, 21, 8):
        x, y = digits.x[start:start + 8], digits.y[start:start + 8]
        if method == "smoothgrad":
            e = lrp.gradients.smoothgrad(model, x, target=y, n=3, seed=7 + start)
        elif method == "deeplift":
            e = lrp.deeplift.deeplift(model, x, y, reference=jobs.LOW)
            np.testing.assert_allclose(store.convergence[start:start + 8], e.convergence.numpy(),
                                       rtol=1e-9, atol=1e-12)
        else:
            e = crp.attribute(model, x, jobs.composite(),
                              [{"features.8": [3], "y": y}, {"features.8": [5], "y": 1}])
        np.testing.assert_allclose(store.relevance[start:start + 8], e.relevance.numpy(),
                                   rtol=1e-9, atol=1e-12)
        assert np.array_equal(store.target[start:start + 8], e.target.numpy())


# ------------------------------------------------------------------------ refusal
def test_a_store_with_other_weights_rules_settings_or_data_is_refused(runs, tmp_path):
    base = runs["single"] / "attr5"
    again = jobs.attributions(jobs.Digits(5), base)
    assert again.computed == 0  # finished: returned without recomputation
    other = jobs.model()
    with torch.no_grad():
        other.classifier[1].bias[0] += 1e-3
    cases = [
        ("model weights", lambda: data.attribute_dataset(
            other, jobs.Digits(5), jobs.composite(), base, target="label", batch_size=8,
            checkpoint_every=2)),
        ("rules", lambda: data.attribute_dataset(
            jobs.model(), jobs.Digits(5), EpsilonPlus(), base, target="label", batch_size=8,
            checkpoint_every=2)),
        ('target (was "label", now null)', lambda: data.attribute_dataset(
            jobs.model(), jobs.Digits(5), jobs.composite(), base, batch_size=8,
            checkpoint_every=2)),
        ("data", lambda: jobs.attributions(jobs.Digits(6), base)),
        ("layers", lambda: crp.collect_references(
            jobs.model(), torch.utils.data.DataLoader(jobs.Digits(5), batch_size=8),
            jobs.composite(), ["features.8"], n=jobs.N_REFS, target="label",
            store=runs["single"] / "refs5", checkpoint_every=2)),
    ]
    for what, call in cases:
        with pytest.raises(StoreMismatch, match="written with other .*" + what.replace("(", r"\(")
                           .replace(")", r"\)")):
            call()
    with pytest.raises(StoreMismatch, match="holds references, not attribution"):
        jobs.attributions(jobs.Digits(5), runs["single"] / "refs5")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not an lrp store"):
        jobs.attributions(jobs.Digits(5), tmp_path / "other")
    # overwrite replaces the store
    copy = tmp_path / "copy"
    jobs.attributions(jobs.Digits(5), copy)
    replaced = data.attribute_dataset(jobs.model(), jobs.Digits(5), EpsilonPlus(), copy,
                                      target="label", batch_size=8, checkpoint_every=2,
                                      overwrite=True)
    assert replaced.computed == 5 and replaced.settings["rules"]["composite"].count("ZPlus")


# ------------------------------------------------------------------------ command line
def _digit_folder(root: Path, count: int) -> Path:
    """Shipped held-out digits as 8-bit PNGs, one subfolder per label."""
    from lrp import demo
    with np.load(demo.SAMPLES) as d:
        images, labels = d["images"], d["labels"]
    for i in range(count):
        folder = root / f"digit{labels[i]}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = np.round(images[i].astype(np.float32) * 255 / 16).astype(np.uint8)
        Image.fromarray(pixels).resize((32, 32), Image.BILINEAR).save(folder / f"{i:02d}.png")
    return root


def test_cli_one_process_and_torchrun(tmp_path, capsys):
    folder = _digit_folder(tmp_path / "digits", 18)
    common = ["--model", "demo", "--batch-size", "4", "--checkpoint-every", "2",
              "--target", "label"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", "2", "-m", "lrp"]
    proc = subprocess.Popen(torchrun + ["attribute-dataset", str(folder), "--store",
                                        str(tmp_path / "attr2")] + common,
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert cli.main(["attribute-dataset", str(folder), "--store", str(tmp_path / "attr1"),
                     "--class-means"] + common) == 0
    out = capsys.readouterr().out
    assert "18 samples explained" in out and "class digit3:" in out
    assert (tmp_path / "attr1" / "class-means" / "digit3.png").is_file()
    assert cli.main(["crp", "collect", str(folder), "--store", str(tmp_path / "refs1"),
                     "--layer", "features.8", "-n", "3"] + common) == 0
    assert "features.8: 64 concepts, 3 references each" in capsys.readouterr().out
    # the CLI's store is the library run on the preprocessed images
    from lrp.canonizers import MergeBatchNorm
    from lrp.composites import EpsilonGammaBox
    from lrp.demo import HIGH, LOW, load_demo_model, preprocess
    paths = sorted(folder.glob("*/*.png"))
    x = torch.cat([preprocess(Image.open(p)) for p in paths])
    labels = torch.tensor([int(p.parent.name[-1]) for p in paths])
    classes = sorted({p.parent.name for p in paths})
    folder_labels = torch.tensor([classes.index(p.parent.name) for p in paths])
    model = load_demo_model()
    oracle = lrp.explain(model, x, EpsilonGammaBox(LOW, HIGH, canonizers=[MergeBatchNorm()]),
                         folder_labels)
    store = AttributionStore(tmp_path / "attr1")
    np.testing.assert_allclose(np.asarray(store.relevance), oracle.relevance.numpy(),
                               rtol=1e-4, atol=1e-6)
    assert np.array_equal(np.asarray(store.label), folder_labels.numpy())
    assert len(set(labels.tolist())) == len(classes)
    # torchrun with 2 processes: the same store
    stdout, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, stderr[-2000:]
    assert "18 samples explained" in stdout and stdout.count("samples explained") == 1
    same_attributions(tmp_path / "attr2", tmp_path / "attr1")
    # errors: one line, exit status 2
    cases = [
        (["attribute-dataset", str(tmp_path / "nope"), "--store", str(tmp_path / "x")] + common,
         "no such folder"),
        (["attribute-dataset", str(folder), "--store", str(tmp_path / "attr1"), "--model", "demo",
          "--composite", "epsilon-plus", "--target", "label"], "written with other rules"),
        (["attribute-dataset", str(folder), "--store", str(tmp_path / "y"), "--model", "demo",
          "--target", "nine"], "--target must be"),
        (["crp", "collect", str(folder), "--store", str(tmp_path / "z"), "--model", "demo",
          "--layer", "features.80"], "no module named 'features.80'"),
    ]
    for argv, message in cases:
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


def test_cli_dataset_factory_methods_and_concepts(tmp_path, monkeypatch):
    """``package.module:factory`` data, ``--method smoothgrad`` and ``--concepts``: the
    stores hold what the library functions give batch by batch."""
    monkeypatch.chdir(HERE)
    from lrp.canonizers import MergeBatchNorm
    from lrp.composites import EpsilonGammaBox
    from lrp.demo import HIGH, LOW, load_demo_model
    args = ["distributed_jobs:digits_dataset", "--model", "demo", "--batch-size", "3",
            "--target", "label"]
    assert cli.main(["attribute-dataset", *args, "--store", str(tmp_path / "sg"),
                     "--method", "smoothgrad"]) == 0
    assert cli.main(["attribute-dataset", *args, "--store", str(tmp_path / "crp"),
                     "--concepts", "features.8:1-2,7"]) == 0
    model, (x, y) = load_demo_model(), jobs.digits_dataset().tensors
    composite = EpsilonGammaBox(LOW, HIGH, canonizers=[MergeBatchNorm()])
    smooth, conditional = AttributionStore(tmp_path / "sg"), AttributionStore(tmp_path / "crp")
    assert conditional.relevance.shape == (6, 3, 1, 32, 32)
    for start in (0, 3):
        xb, yb = x[start:start + 3], y[start:start + 3]
        sg = lrp.gradients.smoothgrad(model, xb, target=yb, n=32, seed=start)
        np.testing.assert_allclose(smooth.relevance[start:start + 3], sg.relevance.numpy(),
                                   rtol=1e-5, atol=1e-7)
        e = crp.attribute(model, xb, composite, [{"features.8": [c], "y": yb} for c in (1, 2, 7)])
        np.testing.assert_allclose(conditional.relevance[start:start + 3], e.relevance.numpy(),
                                   rtol=1e-4, atol=1e-6)


def test_cli_atlas_from_the_reference_store(tmp_path, capsys):
    folder = _digit_folder(tmp_path / "digits", 12)
    store = tmp_path / "refs"
    assert cli.main(["crp", "collect", str(folder), "--store", str(store), "--model", "demo",
                     "--layer", "features.8", "-n", "3", "--batch-size", "6"]) == 0
    image = next(folder.glob("digit3/*.png"))
    out = tmp_path / "atlas.png"
    assert cli.main(["crp", "atlas", str(image), str(folder), "--store", str(store),
                     "--model", "demo", "--layer", "features.8", "--refs", "2",
                     "--concepts", "2", "--out", str(out)]) == 0
    with Image.open(out) as picture:
        assert picture.size[0] > 100 and np.asarray(picture.convert("RGB")).std() > 10
    assert cli.main(["crp", "atlas", str(image), str(folder), "--store", str(store),
                     "--model", "torchvision:resnet18", "--layer", "features.8",
                     "--out", str(out)]) == 2
    assert "not features.8" not in capsys.readouterr().err


def test_cli_heatmap_over_a_folder_in_batches(tmp_path, monkeypatch):
    """Every image of a folder, explained in batches of 3: each heatmap is the
    explanation of that image alone."""
    folder = _digit_folder(tmp_path / "digits", 7)
    rendered = []
    monkeypatch.setattr("lrp.image.heatmap", lambda r, *a, **k: rendered.append(r) or
                        Image.new("RGB", (32, 32)))
    assert cli.main(["heatmap", str(folder), "--model", "demo", "--batch-size", "3",
                     "--out", str(tmp_path / "out")]) == 0
    from lrp.canonizers import MergeBatchNorm
    from lrp.composites import EpsilonGammaBox
    from lrp.demo import HIGH, LOW, load_demo_model, preprocess
    paths = sorted(folder.glob("*/*.png"))
    assert len(rendered) == len(paths) == 7
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        f"{p.stem}_heatmap.png" for p in paths)
    composite = EpsilonGammaBox(LOW, HIGH, canonizers=[MergeBatchNorm()])
    for path, relevance in zip(paths, rendered):
        alone = lrp.explain(load_demo_model(), preprocess(Image.open(path)), composite)
        torch.testing.assert_close(relevance, alone.relevance[0], rtol=1e-4, atol=1e-6)
