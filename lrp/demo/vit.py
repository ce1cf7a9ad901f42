"""A small Vision Transformer for Fashion-MNIST product photos, shipped with the package.

:class:`FashionViT` is a ViT (Dosovitskiy et al. 2021) written with plain torch
modules: a patch embedding (a convolution with kernel and stride 4, so a 28x28 photo
becomes 7x7 = 49 patch tokens), a learnable class token and learnable position
embeddings, pre-norm encoder blocks (LayerNorm, multi-head self-attention through
:func:`torch.nn.functional.scaled_dot_product_attention`, LayerNorm, a GELU MLP, each
with a residual connection), a final LayerNorm and a linear head on the class token.

It is trained by ``scripts/train_vit.py`` on the same data as the shipped CNN
(:mod:`lrp.demo.fashion`: Fashion-MNIST's 60,000 training photos, accuracy measured on
the 10,000 test photos) and uses the same preprocessing and the same 60 held-out test
photos (``lrp/assets/fashion_samples.npz``).  Package data: the weights
(``lrp/assets/fashion_vit.pt``, stored as float16 to keep the package small and loaded
into the float32 model; the recorded accuracy is that of the stored weights) and the
training record (``lrp/assets/fashion_vit.json``).

Attention models need the transformer rules: :class:`lrp.composites.CPLRP` (with
``gamma=0.25``, LXT's recipe for ViTs: the default of ``lrp demo --model vit``, named
``cp-lrp-gamma`` on the command line) or :class:`lrp.composites.AttnLRP`.

Example
-------
>>> from lrp import explain
>>> from lrp.composites import CPLRP
>>> from lrp.demo.vit import load_vit_model
>>> from lrp.demo.fashion import fashion_inputs
>>> model = load_vit_model()
>>> x, labels = fashion_inputs(10)
>>> explain(model, x, CPLRP()).relevance.shape
torch.Size([10, 1, 28, 28])
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import fashion
from .base import DATA_DIR, ShippedModel

__all__ = ["FashionViT", "Attention", "EncoderBlock", "MODEL", "load_vit_model", "WEIGHTS", "INFO"]

#: The trained ``state_dict`` of :class:`FashionViT` (float16 tensors).
WEIGHTS = DATA_DIR / "fashion_vit.pt"
#: Training record: test accuracy, split, preprocessing, architecture, training set-up.
INFO = DATA_DIR / "fashion_vit.json"


class Attention(nn.Module):
    """Multi-head self-attention: ``proj(softmax(q k^T / sqrt(d_head)) v)`` per head,
    with ``q, k, v`` from one linear layer ``qkv``.

    Parameters
    ----------
    dim
        Token width.
    heads
        Number of heads; ``dim`` must be divisible by it.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        """``(N, T, dim)`` tokens to ``(N, T, dim)``."""
        n, t, dim = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        mixed = F.scaled_dot_product_attention(q, k, v)  # (N, heads, T, dim // heads)
        return self.proj(mixed.transpose(1, 2).reshape(n, t, dim))


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``
    with ``mlp = fc2(gelu(fc1(.)))``."""

    def __init__(self, dim: int, heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        """``(N, T, dim)`` tokens to ``(N, T, dim)``."""
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class FashionViT(nn.Module):
    """A Vision Transformer for 28x28 grayscale photos (139k parameters by default).

    Parameters
    ----------
    patch
        Patch size in pixels (divides 28): 4 gives 7x7 = 49 patch tokens.
    dim
        Token width.
    depth
        Number of encoder blocks.
    heads
        Attention heads per block.
    mlp_dim
        Hidden width of the MLPs.
    num_classes
        Number of outputs.
    """

    def __init__(self, patch: int = 4, dim: int = 64, depth: int = 4, heads: int = 4,
                 mlp_dim: int = 128, num_classes: int = 10) -> None:
        super().__init__()
        if fashion.SIZE % patch:
            raise ValueError(f"patch {patch} does not divide the image size {fashion.SIZE}")
        tokens = (fashion.SIZE // patch) ** 2
        self.patch_embed = nn.Conv2d(1, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens + 1, dim))
        self.blocks = nn.Sequential(*[EncoderBlock(dim, heads, mlp_dim) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, num_classes)`` of a normalized ``(N, 1, 28, 28)`` batch."""
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)  # (N, patches, dim)
        tokens = torch.cat([self.cls_token.expand(len(x), -1, -1), tokens], 1) + self.pos_embed
        return self.head(self.norm(self.blocks(tokens))[:, 0])


def load_vit_model() -> FashionViT:
    """The trained Fashion-MNIST ViT, in eval mode, float32, on the CPU (a fresh instance).

    Raises
    ------
    FileNotFoundError
        If the package data is missing.
    """
    return MODEL.load()  # type: ignore[return-value]


#: The ViT in the registry of :mod:`lrp.demo` (``lrp demo --model vit``).
MODEL = ShippedModel(
    name="vit", title="FashionViT (Fashion-MNIST)", architecture=FashionViT,
    weights=WEIGHTS, record=INFO, samples=fashion.SAMPLES, class_names=fashion.CLASS_NAMES,
    size=(fashion.SIZE, fashion.SIZE), mean=(fashion.MEAN,), std=(fashion.STD,),
    prepare=fashion.prepare_fashion, preprocess=fashion.preprocess, noun="photo",
    trained_by="scripts/train_vit.py", composite="cp-lrp-gamma")
