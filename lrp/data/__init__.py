"""Dataset-scale attribution and reference collection, on one process or many.

:func:`attribute_dataset` explains every sample of a dataset with any ``lrp`` method
into an on-disk store (:mod:`lrp.data.store`); :func:`lrp.crp.collect_references`
finds the reference samples of every concept with the same machinery.  Both run in
one process by default and unchanged on every rank of a ``torch.distributed``
process group (``torchrun``): each rank computes its chunks of the dataset
(:mod:`lrp.data.distributed`), and the results are exact for any number of ranks.
Every finished chunk is a checkpoint: a killed run resumes where it stopped.

::

    from lrp.data import attribute_dataset
    store = attribute_dataset(model, dataset, EpsilonPlus(), "attributions/",
                              target="label", batch_size=64, workers=4)
    store.relevance[12]                 # sample 12, read from the store
    store.class_means().means           # mean heatmap per class
"""
from .attribute import METHODS, attribute_dataset
from .distributed import Group, RankError, shard
from .reading import AttributionStore, ClassMeans
from .store import Store, StoreMismatch

__all__ = ["METHODS", "AttributionStore", "ClassMeans", "Group", "RankError", "Store",
           "StoreMismatch", "attribute_dataset", "shard"]
