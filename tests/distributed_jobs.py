"""Jobs run by tests/test_data.py on several processes (a gloo process group on
localhost) and in subprocesses that are killed; the datasets and settings shared
with the single-process runs the tests compare against."""
import json
import os
import signal
import sys
import time
import traceback
from datetime import timedelta
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from lrp import crp, data
from lrp.canonizers import MergeBatchNorm
from lrp.composites import EpsilonGammaBox
from lrp.demo import HIGH, LOW, demo_inputs, load_demo_model

LAYERS = ["features.8", "features.4"]
BATCH = 8
EVERY = 2            # chunks of 16 samples
N_REFS = 5


class Digits(Dataset):
    """The first ``n`` shipped held-out digits in float64 with labels.

    ``fail_at``: reading that index raises (``"raise"``), kills the process
    (``"kill"``) or exits it (``"exit"``); ``rank``: only on that rank.
    """

    def __init__(self, n, fail_at=None, how="raise", rank=None):
        x, y = demo_inputs(60)
        self.x, self.y = x[:n].double(), y[:n]
        self.fail_at, self.how, self.rank = fail_at, how, rank

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        if i == self.fail_at and (self.rank is None or self.rank == _rank()):
            if self.how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if self.how == "exit":
                os._exit(3)
            raise ValueError(f"broken sample {i}")
        return self.x[i], self.y[i]


def _rank():
    dist = torch.distributed
    return dist.get_rank() if dist.is_initialized() else 0


def model():
    return load_demo_model().double()


def composite():
    return EpsilonGammaBox(LOW, HIGH, canonizers=[MergeBatchNorm()])


def references(dataset, store, **kwargs):
    return crp.collect_references(model(), DataLoader(dataset, batch_size=BATCH), composite(),
                                  LAYERS, n=N_REFS, target="label", store=store,
                                  checkpoint_every=EVERY, progress=False, **kwargs)


def attributions(dataset, store, **kwargs):
    return data.attribute_dataset(model(), dataset, composite(), store, target="label",
                                  batch_size=BATCH, checkpoint_every=EVERY, progress=False,
                                  **kwargs)


#: name -> job; run on every rank, in this order.
JOBS = {
    "refs37": lambda out: references(Digits(37), out / "refs37"),
    "attr37": lambda out: attributions(Digits(37), out / "attr37"),
    "refs5": lambda out: references(Digits(5), out / "refs5"),
    "attr5": lambda out: attributions(Digits(5), out / "attr5"),
    # rank 1 raises on sample 28 (its chunk 1, half written) while rank 0 computes chunk 0
    "fail": lambda out: attributions(Digits(37, fail_at=28, rank=1), out / "fail",
                                     data_key="digits-37"),
    # rank 1 dies (a hard exit, no Python error) on sample 28: must be the last job
    "die": lambda out: references(Digits(37, fail_at=28, how="exit", rank=1), out / "die",
                                  data_key="digits-37"),
}


def worker(rank, out, world, jobs):
    """One rank: join the gloo group, run ``jobs``, record each outcome in a JSON file."""
    torch.set_num_threads(1)
    out = Path(out)
    torch.distributed.init_process_group("gloo", init_method=f"file://{out}/rendezvous",
                                         rank=rank, world_size=world,
                                         timeout=timedelta(seconds=60))
    outcomes = {}
    for name in jobs:
        start = time.perf_counter()
        try:
            JOBS[name](out)
            outcomes[name] = {"ok": True}
        except Exception as err:  # recorded for the test
            outcomes[name] = {"error": type(err).__name__, "message": str(err),
                              "trace": traceback.format_exc()}
        outcomes[name]["seconds"] = time.perf_counter() - start
        (out / f"rank{rank}.json").write_text(json.dumps(outcomes))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    # python tests/distributed_jobs.py refs|attr STORE: killed (SIGKILL) on sample 28,
    # in the second batch of chunk 1, after chunk 0 was written
    what, store = sys.argv[1], sys.argv[2]
    run = references if what == "refs" else attributions
    run(Digits(37, fail_at=28, how="kill"), store, data_key="digits-37")


def digits_dataset():
    """A dataset factory for the command line: 6 shipped digits (float32) with labels."""
    x, y = demo_inputs(6)
    return torch.utils.data.TensorDataset(x, y)
