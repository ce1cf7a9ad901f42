"""Reference collection (relevance and activation maximization) over a dataset: lrp's
``collect_references`` against zennit-crp's ``FeatureVisualization.run``, and lrp on
1 vs 2 processes, measured in one run.

    LRP_BENCH_VENV=/work/cmpvenv bash benchmarks/run.sh crp_collect.py [--samples 512]
        [--batch-size 16] [--refs 8] [--layer features.28] [--checkpoint-every 2]
        [--no-peer] [--out RESULTS.md]

torchvision's VGG16 with random weights (seed 0), ``--samples`` random 224x224 images
with random labels (seed 0), EpsilonPlus (ZPlus on convolutions, epsilon on dense
layers), the ``--refs`` most relevant and most activating samples of every channel of
``--layer``, explaining each sample's label, batches of ``--batch-size``:

1. lrp, one process (torch's default threads), ``collect_references`` without a
   store (``cache_dir=False``, ``data_key`` given: the figure is the collection; the
   data hash, which the default pipeline adds, is timed separately);
2. zennit-crp 0.6.0 ``FeatureVisualization.run`` on the same model, data, layer,
   composite and number of references (its ``SAMPLE_SIZE``), ``abs_norm=False`` so
   that it ranks by the same channel relevance sum; it also writes its per-class
   statistics, part of ``run``;
3. lrp in one process again (the machine's load drifts; the ratio to zennit-crp uses
   the mean of the two lrp runs around it);
4. lrp under ``torchrun --standalone`` (this script with ``--worker``, gloo) on 1
   process (torch's default threads) and on ``--procs`` processes (one thread each),
   timed from a barrier to the end of the merge.

A warm-up batch runs first for each.  Agreement: the relevance references of lrp and
zennit-crp (same top-n lists per channel) and lrp on 1 and 2 processes (bit-identical
lists).  The communication of the 2-process run is counted: a 4-byte error flag per
chunk (all-reduce) and the top-n lists once at the end (all-gather); nothing per batch.

The results go to ``--out`` (default ``benchmarks/RESULTS.md``) as the section
``Reference collection`` (replaced when it exists).
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision
from torch.utils.data import DataLoader, TensorDataset

from lrp.composites import EpsilonPlus
from lrp.crp import collect_references
from lrp.data.distributed import Group
from lrp.data.source import Source, data_digest

HERE = Path(__file__).resolve().parent
SECTION = "## Reference collection (collect_references vs zennit-crp, 1 vs 2 processes)"


def setup(samples: int):
    """VGG16 with random weights and the random labelled images (both seeded)."""
    torch.manual_seed(0)
    model = torchvision.models.vgg16(weights=None).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(samples, 3, 224, 224, generator=g)
    y = torch.randint(0, 1000, (samples,), generator=g)
    return model, TensorDataset(x, y)


def ours(model, dataset, args, progress=False):
    loader = DataLoader(dataset, batch_size=args.batch_size)
    return collect_references(model, loader, EpsilonPlus(), [args.layer], n=args.refs,
                              target="label", cache_dir=False, data_key="benchmark",
                              checkpoint_every=args.checkpoint_every, progress=progress)


def zennit_crp(model, dataset, args, path: Path):
    """zennit-crp's FeatureVisualization.run; returns the relevance references
    ``(channels, n)`` read from its output files."""
    import numpy as np
    from crp.attribution import CondAttribution
    from crp.concepts import ChannelConcept
    from crp.visualization import FeatureVisualization
    from zennit.composites import EpsilonPlus as ZEpsilonPlus

    fv = FeatureVisualization(CondAttribution(model, no_param_grad=True), dataset,
                              {args.layer: ChannelConcept()}, abs_norm=False, path=str(path))
    for part in (fv.RelMax, fv.ActMax, fv.RelStats, fv.ActStats):
        part.SAMPLE_SIZE = args.refs
    fv.run(ZEpsilonPlus(), 0, len(dataset), batch_size=args.batch_size, checkpoint=10 ** 6)
    folder = path / "RelMax_sum_unnormed"
    return torch.from_numpy(np.load(folder / f"{args.layer}_data.npy")).T.long(), \
        torch.from_numpy(np.load(folder / f"{args.layer}_rel.npy")).T


def worker(args) -> None:
    """One rank under torchrun: time collect_references; rank 0 prints the result."""
    torch.distributed.init_process_group("gloo")
    group = Group.current()
    model, dataset = setup(args.samples)
    ours(model, TensorDataset(*dataset[:args.batch_size]), args)  # warm-up
    torch.distributed.barrier()
    start, cpu = time.perf_counter(), time.process_time()
    refs = ours(model, dataset, args)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    state = {m: {k: [t.numpy() for t in v] for k, v in {args.layer: [
        refs.values[m][args.layer], refs.indices[m][args.layer],
        refs.targets[m][args.layer]]}.items()} for m in ("relevance", "activation")}
    gathered = len(pickle.dumps(state))
    times = group.all_gather((seconds, cpu))
    if group.rank == 0:
        print("RESULT " + json.dumps({
            "seconds": max(t for t, _ in times), "cpu": sum(c for _, c in times),
            "world": group.world, "threads": torch.get_num_threads(),
            "indices": refs.indices["relevance"][args.layer].tolist(),
            "values": refs.values["relevance"][args.layer].tolist(),
            "gathered_bytes_per_rank": gathered,
            "chunks": -(-args.samples // (args.checkpoint_every * args.batch_size))}),
              flush=True)
    torch.distributed.destroy_process_group()


def launch(args, nproc: int) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc_per_node", str(nproc), str(Path(__file__).resolve()), "--worker",
           "--samples", str(args.samples), "--batch-size", str(args.batch_size),
           "--refs", str(args.refs), "--layer", args.layer,
           "--checkpoint-every", str(args.checkpoint_every)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent),
                                                       os.environ.get("PYTHONPATH", "")]))
    if nproc == 1:
        env["OMP_NUM_THREADS"] = str(torch.get_num_threads())
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--refs", type=int, default=8, help="references per concept")
    parser.add_argument("--layer", default="features.28")
    parser.add_argument("--checkpoint-every", type=int, default=2,
                        help="batches per chunk (the unit the processes share)")
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--no-peer", action="store_true", help="skip zennit-crp")
    parser.add_argument("--out", default=str(HERE / "RESULTS.md"))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    model, dataset = setup(args.samples)
    rows, notes = [], []
    # data hash of the default pipeline (no data_key)
    start = time.perf_counter()
    data_digest(Source.of(DataLoader(dataset, batch_size=args.batch_size)), Group())
    hash_seconds = time.perf_counter() - start

    def timed(name, threads, fn):
        load = os.getloadavg()[0]
        start, cpu = time.perf_counter(), time.process_time()
        result = fn()
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        rows.append((name, threads, seconds, cpu, load, os.getloadavg()[0]))
        print(f"{name}: {seconds:.1f} s, {args.samples / seconds:.2f} samples/s", flush=True)
        return result

    warm = TensorDataset(*dataset[:args.batch_size])
    ours(model, warm, args)
    threads = torch.get_num_threads()
    refs = timed("lrp collect_references, 1 process", threads,
                 lambda: ours(model, dataset, args, progress=None))
    if not args.no_peer:
        tmp = Path(tempfile.mkdtemp())
        try:
            zennit_crp(model, warm, args, tmp / "warm")
            theirs_idx, theirs_val = timed("zennit-crp FeatureVisualization.run", threads,
                                           lambda: zennit_crp(model, dataset, args, tmp / "run"))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        timed("lrp collect_references, 1 process, again", threads,
              lambda: ours(model, dataset, args))
        mine = refs.indices["relevance"][args.layer]
        same = (mine == theirs_idx).all(1).float().mean().item()
        sets = (mine.sort(1).values == theirs_idx.sort(1).values).all(1).float().mean().item()
        rel = ((refs.values["relevance"][args.layer] - theirs_val).abs().max()
               / theirs_val.abs().max()).item()
        ours_mean = (rows[0][2] + rows[2][2]) / 2
        ours_cpu = (rows[0][3] + rows[2][3]) / 2
        notes.append(f"zennit-crp / lrp (the mean of lrp's two runs around it): "
                     f"{rows[1][2] / ours_mean:.2f} in time, {rows[1][3] / ours_cpu:.2f} in CPU "
                     "time (less sensitive to the load of the shared machine).")
        notes.append(f"Agreement with zennit-crp: identical ordered top-{args.refs} lists of "
                     f"relevance references for {100 * same:.1f}% of the "
                     f"{mine.shape[0]} channels, the same sets for {100 * sets:.1f}% (the rest "
                     f"are near-ties in float32); values differ by at most {rel:.1e} "
                     "(relative to the largest).")

    results = {}
    for nproc in (1, args.procs):
        load = os.getloadavg()[0]
        results[nproc] = launch(args, nproc)
        rows.append((f"lrp collect_references, {nproc} process{'es' if nproc > 1 else ''} "
                     "(torchrun, gloo)", results[nproc]["threads"], results[nproc]["seconds"],
                     results[nproc]["cpu"], load, os.getloadavg()[0]))
        print(f"lrp, torchrun, {nproc} processes: {results[nproc]['seconds']:.1f} s", flush=True)
    procs = results[args.procs]
    notes.append(f"{args.procs} processes against 1 under torchrun: "
                 f"{results[1]['seconds'] / procs['seconds']:.2f}x the samples/s, "
                 f"{results[1]['cpu'] / procs['cpu']:.2f}x the samples per CPU second. On a "
                 "shared machine more processes also get a larger share of the cores, so the "
                 "first figure overstates the scaling of an idle machine; the second estimates "
                 "it when one process with 2 threads already keeps both cores busy.")
    identical = all(r["indices"] == refs.indices["relevance"][args.layer].tolist() and
                    r["values"] == refs.values["relevance"][args.layer].tolist()
                    for r in results.values())
    notes.append(f"lrp on {args.procs} processes vs 1: relevance references "
                 f"{'bit-identical' if identical else 'DIFFERENT'}.")
    notes.append(f"Communication of the {args.procs}-process run: nothing per batch; one "
                 f"4-byte all-reduce per chunk of {args.checkpoint_every * args.batch_size} samples "
                 f"({procs['chunks']} chunks); at the end one all-gather of each rank's top-n "
                 f"lists, {procs['gathered_bytes_per_rank'] / 1024:.0f} KiB pickled per rank "
                 "(both modes), whatever the dataset size.")
    notes.append(f"The data hash of the default pipeline (no `data_key`) took {hash_seconds:.1f} s "
                 f"for the {args.samples} samples ({100 * hash_seconds / rows[0][2]:.1f}% of the "
                 "1-process collection), not included above.")
    write(args, rows, notes)


def write(args, rows, notes) -> None:
    base = rows[0][2]
    lines = [SECTION, "",
             f"{time.strftime('%Y-%m-%d')}, `benchmarks/crp_collect.py --samples {args.samples} "
             f"--batch-size {args.batch_size} --refs {args.refs} --layer {args.layer} "
             f"--checkpoint-every {args.checkpoint_every}`: VGG16 (random "
             "weights), 224x224 random images with random labels, EpsilonPlus, the label "
             "explained; one run on a machine shared with other jobs (2 cores), so compare "
             "the ratios.", "",
             "| run | threads per process | seconds | samples/s | time / first lrp run | "
             "CPU seconds (all processes) | load average before, after |",
             "|---|---|---|---|---|---|---|"]
    for name, threads, seconds, cpu, before, after in rows:
        lines.append(f"| {name} | {threads} | {seconds:.1f} | {args.samples / seconds:.2f} | "
                     f"{seconds / base:.2f} | {cpu:.0f} | {before:.1f}, {after:.1f} |")
    lines += [""] + [f"- {note}" for note in notes] + [""]
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    old = out.read_text() if out.exists() else ""
    pattern = re.compile(re.escape(SECTION) + r".*?(?=^## |\Z)", re.S | re.M)
    new = pattern.sub(lambda _: text + "\n", old) if pattern.search(old) else \
        old.rstrip("\n") + "\n\n" + text
    out.write_text(new)


if __name__ == "__main__":
    main()
