"""Transformers: AttnLRP and CP-LRP against their formulas written out, attention
kernels against explicit attention, Hugging Face models as they are (tiny, random
weights, built from configs), conservation, the audit, and no side effects."""
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
import transformers as T
from torch import nn

import lrp
from lrp.attach import INPUT
from lrp.composites import AttnLRP, CPLRP
from lrp.transformers import explain_tokens

DT = torch.float64
V = 50


# --------------------------------------------------------------------------- written out

class Head(nn.Module):
    """One bias-free attention head on (batch, tokens, dim), summed into one logit."""

    def __init__(self, dim=4, sdpa=False):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.wq, self.wk, self.wv = (nn.Linear(dim, dim, bias=False).to(DT) for _ in range(3))
        self.out = nn.Linear(dim, 2, bias=False).to(DT)
        with torch.no_grad():
            for layer in (self.wq, self.wk, self.wv, self.out):
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=g, dtype=DT))
        self.sdpa = sdpa

    def forward(self, x):
        q, k, v = self.wq(x), self.wk(x), self.wv(x)
        if self.sdpa:
            o = F.scaled_dot_product_attention(q, k, v)
        else:
            a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
            o = a @ v
        return self.out(o.sum(1))


def attnlrp_by_hand(model: Head, x: torch.Tensor, target: int, cp: bool) -> torch.Tensor:
    """AttnLRP / CP-LRP relevance of one head, every step written out (LRP-0 on the
    bias-free linear layers: R_in = a * W^T (R_out / z))."""
    with torch.no_grad():
        wq, wk, wv, wo = (m.weight for m in (model.wq, model.wk, model.wv, model.out))
        d = x.shape[-1]
        q, k, v = x @ wq.T, x @ wk.T, x @ wv.T
        s = q @ k.transpose(-1, -2) / math.sqrt(d)
        a = torch.softmax(s, -1)
        o = a @ v                                        # (b, i, e)
        r_o = o * wo[target]                             # relevance of o (sum over tokens)
        # o_ie = sum_j a_ij v_je: each product a_ij v_je gets its share of r_o, halved
        # between the two operands (uniform rule) unless a is a constant (CP-LRP)
        contrib = a[..., :, :, None] * v[..., None, :, :]        # (b, i, j, e)
        share = contrib / o[..., :, None, :] * r_o[..., :, None, :]
        r_v = share.sum(1) * (1.0 if cp else 0.5)               # (b, j, e)
        r_x = x * ((r_v / v) @ wv)
        if not cp:
            r_a = 0.5 * share.sum(-1)                            # (b, i, j)
            # softmax (AttnLRP Prop. 3.1): R_s = s (R_a - a sum_j R_a)
            r_s = s * (r_a - a * r_a.sum(-1, keepdim=True))
            # s_ij = sum_e q_ie k_je / sqrt(d): uniform rule again
            qk = q[..., :, None, :] * k[..., None, :, :] / math.sqrt(d)   # (b, i, j, e)
            part = qk / s[..., None] * r_s[..., None] * 0.5
            r_q, r_k = part.sum(2), part.sum(1)
            r_x = r_x + x * ((r_q / q) @ wq) + x * ((r_k / k) @ wk)
    return r_x


@pytest.mark.parametrize("sdpa", [False, True], ids=["explicit", "scaled_dot_product_attention"])
@pytest.mark.parametrize("cp", [False, True], ids=["AttnLRP", "CPLRP"])
def test_attention_head_by_hand(cp, sdpa):
    model = Head(sdpa=sdpa).eval()
    x = torch.randn(2, 3, 4, dtype=DT, generator=torch.Generator().manual_seed(1))
    composite = CPLRP(epsilon=0) if cp else AttnLRP(epsilon=0)
    e = lrp.explain(model, x, composite, target=1, audit="strict")
    torch.testing.assert_close(e.relevance, attnlrp_by_hand(model, x, 1, cp))
    if cp:  # bias-free with constant attention weights: conserved
        torch.testing.assert_close(e.conservation(), e.output[:, 1])


class Block(nn.Module):
    """A pre-norm encoder block written out with modules and explicit attention, to
    compare with ``nn.TransformerEncoderLayer`` (MultiheadAttention's functional form)."""

    def __init__(self, layer: nn.TransformerEncoderLayer, heads: int):
        super().__init__()
        self.layer, self.heads = layer, heads

    def forward(self, x):
        layer, h = self.layer, self.heads
        b, n, d = x.shape
        y = layer.norm1(x)
        q, k, v = F.linear(y, layer.self_attn.in_proj_weight, layer.self_attn.in_proj_bias).chunk(3, -1)
        q, k, v = (t.reshape(b, n, h, d // h).transpose(1, 2) for t in (q, k, v))
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // h), -1)
        o = (a @ v).transpose(1, 2).reshape(b, n, d)
        x = x + layer.self_attn.out_proj(o)
        return x + layer.linear2(layer.activation(layer.linear1(layer.norm2(x))))


@pytest.mark.parametrize("make", [AttnLRP, CPLRP])
def test_multihead_attention_equals_explicit_attention(make):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True, norm_first=True,
                                       activation="gelu").to(DT).eval()
    head = nn.Linear(32, 3).to(DT)
    fused = nn.Sequential(layer, nn.Flatten(), head).eval()
    explicit = nn.Sequential(Block(layer, 2), nn.Flatten(), head).eval()
    x = torch.randn(2, 4, 8, dtype=DT)
    a = lrp.explain(fused, x, make(), target=0, audit="strict")
    b = lrp.explain(explicit, x, make(), target=0, audit="strict")
    torch.testing.assert_close(a.output, b.output)
    torch.testing.assert_close(a.relevance, b.relevance)


class FunctionalProjection(nn.Module):
    """Uses its layer's weight functionally, as attention blocks do (swin's qkv/proj)."""

    def __init__(self, functional):
        super().__init__()
        self.proj, self.out = nn.Linear(4, 4).to(DT), nn.Linear(4, 2).to(DT)
        self.functional = functional

    def forward(self, x):
        h = F.linear(x, self.proj.weight, self.proj.bias) if self.functional else self.proj(x)
        return self.out(torch.tanh(h))


def test_functional_use_of_a_layer_gets_its_rule():
    x = torch.randn(3, 4, dtype=DT)
    torch.manual_seed(0)
    a = FunctionalProjection(True).eval()
    b = FunctionalProjection(False).eval()
    b.load_state_dict(a.state_dict())
    composite = AttnLRP(epsilon=0.5)  # a large epsilon: the rule visibly changes relevance
    ea = lrp.explain(a, x, composite, target=0, audit="strict")
    eb = lrp.explain(b, x, composite, target=0, audit="strict")
    torch.testing.assert_close(ea.relevance, eb.relevance)
    plain = lrp.explain(a, x, AttnLRP(epsilon=0), target=0).relevance
    assert not torch.allclose(ea.relevance, plain)


# --------------------------------------------------------------------------- Hugging Face

SMALL = dict(vocab_size=V, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
             intermediate_size=32)


def hf_models():
    yield "llama", lambda: T.LlamaForCausalLM(T.LlamaConfig(**SMALL, num_key_value_heads=2))
    yield "qwen2", lambda: T.Qwen2ForCausalLM(T.Qwen2Config(**SMALL, num_key_value_heads=2))
    yield "mistral", lambda: T.MistralForCausalLM(T.MistralConfig(**SMALL, num_key_value_heads=2))
    yield "gemma3", lambda: T.Gemma3ForCausalLM(T.Gemma3TextConfig(**SMALL, num_key_value_heads=2,
                                                                  head_dim=4))
    yield "phi3", lambda: T.Phi3ForCausalLM(T.Phi3Config(**SMALL, num_key_value_heads=2,
                                                         pad_token_id=0))
    yield "bert", lambda: T.BertForSequenceClassification(T.BertConfig(**SMALL, num_labels=3))
    yield "roberta", lambda: T.RobertaForSequenceClassification(
        T.RobertaConfig(**SMALL, num_labels=3, pad_token_id=1))
    yield "distilbert", lambda: T.DistilBertForSequenceClassification(T.DistilBertConfig(
        vocab_size=V, dim=16, n_layers=2, n_heads=4, hidden_dim=32, num_labels=3))
    yield "gpt2", lambda: T.GPT2LMHeadModel(T.GPT2Config(vocab_size=V, n_embd=16, n_layer=2,
                                                         n_head=4, bos_token_id=0, eos_token_id=0))
    yield "t5-encoder", lambda: T.T5EncoderModel(T.T5Config(vocab_size=V, d_model=16, d_kv=4,
                                                            num_layers=2, num_heads=4, d_ff=32))


HF = dict(hf_models())


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return HF[name]().to(DT).eval()


def bias_free(model: nn.Module) -> nn.Module:
    """Zero every bias and every added constant (position / token-type embeddings,
    LayerNorm shifts), so that conservative rules conserve exactly."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "position_embeddings" in name or "token_type" in name \
                    or name.endswith("wpe.weight"):
                p.zero_()
    return model


def explain_hf(name, model, composite, ids, **kw):
    if name == "t5-encoder":  # an encoder without a head: explain one hidden unit
        return lrp.explain(model, model.get_input_embeddings()(ids).detach(), composite,
                           target=0, model_kwargs={"inputs_embeds": INPUT},
                           output=lambda out: out.last_hidden_state[:, 0], **kw)
    return explain_tokens(model, ids, composite, **kw)


@pytest.mark.parametrize("name", list(HF))
def test_hugging_face_models_as_they_are(name):
    """Audit empty with both presets; CP-LRP conserves the explained logit on the
    bias-free model; the model's outputs and gradients are untouched afterwards."""
    model = build(name)
    ids = torch.randint(3, V, (2, 6), generator=torch.Generator().manual_seed(0))
    def plain():
        embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
        out = model(inputs_embeds=embeds)
        out = out.logits if hasattr(out, "logits") else out.last_hidden_state
        out.sum().backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        model.zero_grad(set_to_none=True)
        return out.detach(), embeds.grad, grads

    before = plain()
    for composite in (AttnLRP(), CPLRP()):
        e = explain_hf(name, model, composite, ids, audit="strict")
        assert e.audit.ok and torch.isfinite(e.relevance).all()
        assert e.relevance.shape == (2, 6, model.get_input_embeddings().weight.shape[1])
    after = plain()  # the plain forward and backward are bit-identical afterwards
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])
    assert all(torch.equal(a, b) for a, b in zip(before[2], after[2]))
    free = bias_free(build(name))
    e = explain_hf(name, free, CPLRP(epsilon=0), ids)
    explained = e.output.gather(1, e.target[:, None])[:, 0]
    torch.testing.assert_close(e.conservation(), explained, rtol=1e-5, atol=1e-8)


def test_sdpa_and_eager_attention_agree():
    """Hugging Face's fused (sdpa) and eager attention are independent code paths;
    eager computes its softmax in float32, hence the tolerance."""
    torch.manual_seed(0)
    cfg = dict(SMALL, num_key_value_heads=2)
    sdpa = T.LlamaForCausalLM(T.LlamaConfig(**cfg, attn_implementation="sdpa")).to(DT).eval()
    eager = T.LlamaForCausalLM(T.LlamaConfig(**cfg, attn_implementation="eager")).to(DT).eval()
    eager.load_state_dict(sdpa.state_dict())
    ids = torch.randint(3, V, (2, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, -2:] = 0
    for composite in (AttnLRP(), CPLRP()):
        a = explain_tokens(sdpa, ids, composite, attention_mask=mask).relevance
        b = explain_tokens(eager, ids, composite, attention_mask=mask).relevance
        assert ((a - b).abs().max() / b.abs().max()).item() < 1e-6


def test_explain_tokens_targets_positions_and_contrast():
    model = build("llama")
    ids = torch.randint(3, V, (2, 6), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0  # right padding: the second sequence ends at token 3
    with torch.no_grad():
        logits = model(ids, attention_mask=mask).logits
    e = explain_tokens(model, ids, AttnLRP(), attention_mask=mask)
    rows = torch.arange(2)
    last = torch.tensor([5, 3])
    assert torch.equal(e.target, logits[rows, last].argmax(-1))
    torch.testing.assert_close(e.output, logits[rows, last])
    torch.testing.assert_close(e.tokens, e.relevance.sum(-1))
    assert e.tokens[1, 4:].abs().sum() == 0  # padding gets nothing
    # an earlier position, an explicit target, and a contrast
    with torch.no_grad():
        unmasked = model(ids).logits
    p = explain_tokens(model, ids, AttnLRP(), target=7, position=2)
    torch.testing.assert_close(p.output, unmasked[:, 2])
    c = explain_tokens(model, ids, AttnLRP(), target=7, contrast=9, position=2)
    expected = unmasked[:, 2, 7] - unmasked[:, 2, 9]
    torch.testing.assert_close(c.output.gather(1, c.target[:, None])[:, 0], expected)
    torch.testing.assert_close(c.relevance, p.relevance - explain_tokens(
        model, ids, AttnLRP(), target=9, position=2).relevance)


def test_explain_tokens_builds_no_key_value_cache():
    """A causal LM is explained with use_cache=False (nothing to build or keep), unless
    the caller says otherwise; the relevance is the same either way."""
    model = build("llama")
    ids = torch.randint(3, V, (2, 5), generator=torch.Generator().manual_seed(4))
    seen = []
    hook = model.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(kwargs.get("use_cache")), with_kwargs=True)
    try:
        plain = explain_tokens(model, ids, AttnLRP())
        cached = explain_tokens(model, ids, AttnLRP(), model_kwargs={"use_cache": True})
    finally:
        hook.remove()
    assert seen == [False, True]
    torch.testing.assert_close(plain.relevance, cached.relevance)


def test_explain_tokens_computes_the_explained_logits_only():
    """A causal LM computes the logits from the earliest explained position on
    (logits_to_keep), with the same relevance and output as all logits
    (logits_to_keep=0); other values are refused, and a classifier gets no such
    argument."""
    model = build("llama")
    ids = torch.randint(3, V, (2, 6), generator=torch.Generator().manual_seed(5))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0  # right padding: positions 5 and 3
    seen = []
    hook = model.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(kwargs.get("logits_to_keep")), with_kwargs=True)
    try:
        kept = explain_tokens(model, ids, AttnLRP(), attention_mask=mask)
        every = explain_tokens(model, ids, AttnLRP(), attention_mask=mask,
                               model_kwargs={"logits_to_keep": 0})
        early = explain_tokens(model, ids, CPLRP(), position=1)
        early_all = explain_tokens(model, ids, CPLRP(), position=1,
                                   model_kwargs={"logits_to_keep": 0})
    finally:
        hook.remove()
    assert seen == [3, 0, 5, 0]
    # (the head's matrix product on fewer rows may round differently)
    torch.testing.assert_close(kept.relevance, every.relevance, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(kept.output, every.output, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(early.relevance, early_all.relevance, rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match="logits_to_keep=0"):
        explain_tokens(model, ids, AttnLRP(), model_kwargs={"logits_to_keep": 2})

    class Ignores(nn.Module):
        """Takes logits_to_keep and returns every position's logits all the same."""

        def __init__(self, lm):
            super().__init__()
            self.lm = lm

        def get_input_embeddings(self):
            return self.lm.get_input_embeddings()

        def forward(self, inputs_embeds=None, attention_mask=None, logits_to_keep=0):
            return self.lm(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                           use_cache=False)
    ignored = explain_tokens(Ignores(model), ids, AttnLRP(), attention_mask=mask)
    torch.testing.assert_close(ignored.relevance, every.relevance, rtol=1e-12, atol=1e-15)

    class Truncates(Ignores):
        def forward(self, inputs_embeds=None, attention_mask=None, logits_to_keep=0):
            return super().forward(inputs_embeds, attention_mask).logits[:, :2]
    with pytest.raises(ValueError, match="logits for 2 positions, expected 6"):
        explain_tokens(Truncates(model), ids, AttnLRP(), attention_mask=mask)
    bert = build("bert")
    seen.clear()
    hook = bert.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append("logits_to_keep" in kwargs), with_kwargs=True)
    try:
        explain_tokens(bert, ids, AttnLRP())
    finally:
        hook.remove()
    assert seen == [False]


def test_explain_tokens_errors():
    model = build("bert")
    with pytest.raises(TypeError, match="integer tensor"):
        explain_tokens(model, torch.randn(2, 3))
    with pytest.raises(ValueError, match="attention_mask has shape"):
        explain_tokens(model, torch.ones(2, 3, dtype=torch.long), attention_mask=torch.ones(2, 4))
    with pytest.raises(TypeError, match="get_input_embeddings"):
        explain_tokens(nn.Linear(3, 3), torch.ones(2, 3, dtype=torch.long))
    llama = build("llama")
    with pytest.raises(ValueError, match="outside the 3 tokens"):
        explain_tokens(llama, torch.ones(1, 3, dtype=torch.long), position=5)


@pytest.mark.parametrize("returns", ["tuple", "dict", "model_output"])
def test_explain_accepts_structured_outputs(returns):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            y = self.fc(x)
            if returns == "tuple":
                return y, torch.zeros(1)
            if returns == "dict":
                return {"logits": y, "aux": torch.zeros(1)}
            return T.modeling_outputs.SequenceClassifierOutput(logits=y)

    model = Net().eval()
    x = torch.randn(2, 4)
    e = lrp.explain(model, x, AttnLRP(), target=1)
    torch.testing.assert_close(e.relevance, x * model.fc.weight[1])
    with pytest.raises(ValueError, match="no 'scores'"):
        lrp.explain(model, x, AttnLRP(), output="scores")


def test_presets_print_their_rules():
    text = AttnLRP().tree(build("llama"))
    assert "-> Gradient()" in text and "Epsilon" not in text  # LRP-0 as the plain gradient
    assert "SiLUActivation()  -> Pass()" in text
    assert "softmax -> Gradient()" in text and "matmul -> Uniform()" in text
    assert "-> Epsilon(epsilon=1e-06)" in AttnLRP(epsilon=1e-6).tree(build("llama"))
    cp = CPLRP(gamma=0.25).tree(build("gpt2"))
    assert "Conv1D" in cp and "-> GeneralizedGamma(gamma=0.25" in cp and "softmax -> Constant()" in cp


# --------------------------------------------------------------------------- vision

def vision_models():
    import torchvision
    from timm.models.deit import VisionTransformerDistilled
    from timm.models.vision_transformer import VisionTransformer
    small = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=5)
    yield "torchvision ViT", lambda: torchvision.models.VisionTransformer(
        32, 8, 2, 4, 32, 64, num_classes=5), (2, 3, 32, 32)
    yield "torchvision Swin", lambda: torchvision.models.SwinTransformer(
        [4, 4], 16, [2, 2], [2, 4], [4, 4], num_classes=5), (1, 3, 32, 32)
    yield "timm ViT", lambda: VisionTransformer(**small), (2, 3, 32, 32)
    yield "timm DeiT", lambda: VisionTransformerDistilled(**small), (2, 3, 32, 32)


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.encoder(x).mean(1))


@pytest.mark.parametrize("name, make, shape", [
    pytest.param(*case, id=case[0]) for case in [("nn.TransformerEncoder", Encoder, (2, 5, 16)),
                                                 *vision_models()]])
def test_vision_and_torch_transformers(name, make, shape):
    torch.manual_seed(0)
    model = make().to(DT).eval()
    x = torch.randn(*shape, dtype=DT)
    with torch.no_grad():
        plain = model(x)
    for composite in (AttnLRP(), CPLRP(), AttnLRP(gamma=0.25)):
        e = lrp.explain(model, x, composite, audit="strict")
        assert e.audit.ok and torch.isfinite(e.relevance).all()
        torch.testing.assert_close(e.output, plain)
    if name == "nn.TransformerEncoder":  # bias-free: CP-LRP conserves
        e = lrp.explain(bias_free(model), x, CPLRP(epsilon=0))
        explained = e.output.gather(1, e.target[:, None])[:, 0]
        torch.testing.assert_close(e.conservation(), explained, rtol=1e-5, atol=1e-8)
