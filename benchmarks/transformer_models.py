"""Tiny random-weight transformers for the LXT comparison and the transformer speed
benchmark, built from configs (no downloads).

Imported by ``lxt_compare.py`` (lrp's side), by ``lxt_side.py`` (LXT's side, which runs
on transformers 4.52.4 in its own process) and by ``transformer_speed.py``; it imports
neither lrp nor LXT, and only configuration keywords that transformers 4.52 and 5.x
both accept, so that one ``state_dict`` loads into the model of either version.
"""
from __future__ import annotations

from typing import Callable, Dict, Tuple

import torch
from torch import Tensor, nn

VOCAB = 100
#: Two layers, hidden 32, four heads, as in the issue ("2 layers, hidden 32-64").
TINY = dict(hidden=32, layers=2, heads=4, kv_heads=2, mlp=64, vocab=VOCAB)
#: The speed benchmark's LLaMA-shaped model: 4 layers, hidden 256.
LLAMA_SPEED = dict(hidden=256, layers=4, heads=4, kv_heads=4, mlp=688, vocab=1000)


def _causal_lm(config_name: str, model_name: str, **extra) -> Callable[[dict], nn.Module]:
    def build(s: dict) -> nn.Module:
        import transformers
        config = getattr(transformers, config_name)(
            vocab_size=s["vocab"], hidden_size=s["hidden"], intermediate_size=s["mlp"],
            num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
            num_key_value_heads=s["kv_heads"], max_position_embeddings=256,
            bos_token_id=1, eos_token_id=2, pad_token_id=0, **extra)
        return getattr(transformers, model_name)(config)
    return build


def _bert_like(config_name: str, model_name: str) -> Callable[[dict], nn.Module]:
    def build(s: dict) -> nn.Module:
        import transformers
        config = getattr(transformers, config_name)(
            vocab_size=s["vocab"], hidden_size=s["hidden"], intermediate_size=s["mlp"],
            num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
            max_position_embeddings=256, num_labels=3, pad_token_id=0)
        return getattr(transformers, model_name)(config)
    return build


def _gpt2(s: dict) -> nn.Module:
    import transformers
    config = transformers.GPT2Config(vocab_size=s["vocab"], n_embd=s["hidden"], n_layer=s["layers"],
                                     n_head=s["heads"], n_inner=s["mlp"], n_positions=256,
                                     bos_token_id=1, eos_token_id=2)
    return transformers.GPT2LMHeadModel(config)


def _distilbert(s: dict) -> nn.Module:
    import transformers
    config = transformers.DistilBertConfig(vocab_size=s["vocab"], dim=s["hidden"], hidden_dim=s["mlp"],
                                           n_layers=s["layers"], n_heads=s["heads"],
                                           max_position_embeddings=256, num_labels=3, pad_token_id=0)
    return transformers.DistilBertForSequenceClassification(config)


def _t5_encoder(s: dict) -> nn.Module:
    """T5's encoder with a token-classification head (``T5ForTokenClassification``)."""
    import transformers
    config = transformers.T5Config(vocab_size=s["vocab"], d_model=s["hidden"], d_kv=s["hidden"] // s["heads"],
                                   d_ff=s["mlp"], num_layers=s["layers"], num_heads=s["heads"],
                                   num_labels=3, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    return transformers.T5ForTokenClassification(config)


class TorchEncoderClassifier(nn.Module):
    """``nn.TransformerEncoder`` (pre-norm, GELU) with a token embedding, learned
    positions, mean pooling and a linear head; ``get_input_embeddings`` and an
    ``inputs_embeds`` keyword as Hugging Face models have them."""

    def __init__(self, s: dict, classes: int = 3):
        super().__init__()
        self.embed = nn.Embedding(s["vocab"], s["hidden"])
        self.position = nn.Parameter(torch.randn(256, s["hidden"]) * 0.02)
        layer = nn.TransformerEncoderLayer(s["hidden"], s["heads"], s["mlp"], dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, s["layers"], enable_nested_tensor=False)
        self.head = nn.Linear(s["hidden"], classes)

    def get_input_embeddings(self) -> nn.Module:
        return self.embed

    def forward(self, input_ids: Tensor = None, inputs_embeds: Tensor = None) -> Tensor:
        x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds
        x = x + self.position[:x.shape[1]]
        return self.head(self.encoder(x).mean(1))


def _torch_encoder(s: dict) -> nn.Module:
    return TorchEncoderClassifier(s)


#: name -> (builder, kind): ``"lm"`` explains a next-token logit at the last position,
#: ``"cls"`` a class logit, ``"tokcls"`` a class logit of the last token.
TOKEN_MODELS: Dict[str, Tuple[Callable[[dict], nn.Module], str]] = {
    "llama": (_causal_lm("LlamaConfig", "LlamaForCausalLM"), "lm"),
    "qwen2": (_causal_lm("Qwen2Config", "Qwen2ForCausalLM"), "lm"),
    "gemma3": (_causal_lm("Gemma3TextConfig", "Gemma3ForCausalLM", head_dim=8), "lm"),
    "bert": (_bert_like("BertConfig", "BertForSequenceClassification"), "cls"),
    "gpt2": (_gpt2, "lm"),
    # architectures LXT 2.1 does not cover
    "mistral": (_causal_lm("MistralConfig", "MistralForCausalLM"), "lm"),
    "phi3": (_causal_lm("Phi3Config", "Phi3ForCausalLM"), "lm"),
    "roberta": (_bert_like("RobertaConfig", "RobertaForSequenceClassification"), "cls"),
    "distilbert": (_distilbert, "cls"),
    "t5-encoder": (_t5_encoder, "tokcls"),
    "torch-encoder": (_torch_encoder, "cls"),
}


def tiny_vit_spec() -> dict:
    return dict(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=64,
                num_classes=10)


def vit_b16_spec() -> dict:
    return dict(image_size=224, patch_size=16, num_layers=12, num_heads=12, hidden_dim=768,
                mlp_dim=3072, num_classes=1000)


def build_vit(spec: dict) -> nn.Module:
    from torchvision.models.vision_transformer import VisionTransformer
    return VisionTransformer(**spec)


def build(name: str, seed: int = 0, spec: dict = None) -> nn.Module:
    """Model ``name`` (a key of :data:`TOKEN_MODELS` or ``"vit"``) with random weights
    drawn from ``seed``, in eval mode."""
    torch.manual_seed(seed)
    if name == "vit":
        model = build_vit(spec or tiny_vit_spec())
    else:
        model = TOKEN_MODELS[name][0](spec or TINY)
    return model.eval()


def randomize(model: nn.Module, seed: int) -> nn.Module:
    """Redraw every parameter at a scale where attention is far from uniform and the
    non-linearities matter (Hugging Face initializes with std 0.02, unit norm weights
    and zero biases): matrices ~ N(0, 1/fan_in), normalization weights perturbed by
    N(0, 0.3^2), every other vector ~ N(0, 0.1^2); in place."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype)
            owners = name.lower().split(".")[:-1]
            if p.dim() >= 2:
                p.copy_(noise / p[0].numel() ** 0.5)
            elif any("norm" in o or o.startswith("ln") for o in owners):
                p.add_(0.3 * noise)
            else:
                p.copy_(0.1 * noise)
    return model


def make_bias_free(model: nn.Module) -> nn.Module:
    """Zero every bias and every additive embedding other than the token embedding
    (learned positions, token types, ViT's class token and positions), in place.  Then
    the explained logit is a homogeneous function of the input embeddings (pixels), and
    a conservative rule must sum to it.  T5's relative position bias, added to the
    attention scores, stays: CP-LRP holds the attention weights constant."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            last = name.split(".")[-1]
            if last in ("bias", "in_proj_bias", "class_token", "pos_embedding", "position") \
                    or "position_embeddings" in name or "token_type_embeddings" in name \
                    or name.endswith("wpe.weight"):
                p.zero_()
    return model


def token_inputs(batch: int, length: int, vocab: int = VOCAB, seed: int = 1) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (batch, length), generator=g)


def image_inputs(batch: int, size: int, seed: int = 1) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, size, size, generator=g)


def speed_case(name: str, batch: int, length: int) -> Tuple[nn.Module, Tensor, Tensor]:
    """The speed benchmark's model (``"llama"``: :data:`LLAMA_SPEED`; ``"vit"``: ViT-B/16;
    float32, :func:`randomize`-d weights, parameters not requiring gradients, as in
    LXT's examples), its input (``batch`` x ``length`` token ids or ``batch`` 224x224
    images) and the predicted target (next token after the last position, or class).
    torchvision initializes the ViT's head with zeros, so unrandomized it would explain
    a zero logit."""
    if name == "vit":
        model = randomize(build("vit", spec=vit_b16_spec()), 0)
        x = image_inputs(batch, 224)
    else:
        model = randomize(build(name, spec=LLAMA_SPEED), 0)
        x = token_inputs(batch, length, LLAMA_SPEED["vocab"])
    for p in model.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        logits = logits_of(model(x))
    target = (logits[:, -1] if logits.dim() == 3 else logits).argmax(1)
    return model, x, target


def logits_of(output) -> Tensor:
    """The logits of a model output (tensor, tuple or ``ModelOutput``)."""
    if isinstance(output, Tensor):
        return output
    if hasattr(output, "logits"):
        return output.logits
    return output[0]


def explained_logit(logits: Tensor, kind: str, target: Tensor, position: int = -1) -> Tensor:
    """Per-sample explained logit: at ``position`` of the sequence for language models
    and token classifiers, the class logit otherwise."""
    if logits.dim() == 3:
        logits = logits[:, position]
    return logits.gather(1, target[:, None]).squeeze(1)
