"""The IBert model family: fp32 parity with transformers, fake-quant training, the integer engine."""
import math

import pytest
import torch
import transformers
import transformers.models.ibert.modeling_ibert as hf_ibert
from torch.utils._python_dispatch import TorchDispatchMode

import ibert
import kernels
from ibert import IBertConfig
from ibert.checkpoints import load_pretrained
from ibert.engine import convert_to_integer, load_integer, save_integer
from conftest import DEVICE, force_isa, on_device
from kernels._cpu import cpp_available

HEADS = ["IBertModel", "IBertForMaskedLM", "IBertForSequenceClassification", "IBertForMultipleChoice",
         "IBertForTokenClassification", "IBertForQuestionAnswering"]
TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=40, num_labels=2)


def batch(seed=0, B=3, S=11):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 99, (B, S), generator=g)
    mask = torch.ones(B, S, dtype=torch.long)
    mask[1, 7:] = 0
    ids[1, 7:] = 1
    return ids, mask


def inputs_for(name, ids, mask):
    if name == "IBertForMultipleChoice":
        return dict(input_ids=ids[None].expand(2, *ids.shape).contiguous(),
                    attention_mask=mask[None].expand(2, *mask.shape).contiguous())
    return dict(input_ids=ids, attention_mask=mask)


def calibrated(name="IBertForSequenceClassification", seed=0, **kw):
    """A fake-quant model whose activation ranges were observed on a few training-mode batches."""
    torch.manual_seed(seed)
    model = getattr(ibert, name)(IBertConfig(**{**TINY, "quant_mode": True, **kw}))
    model.train()
    with torch.no_grad():
        for s in range(3):
            model(**inputs_for(name, *batch(s)))
    return model.eval()


@pytest.mark.parametrize("name", HEADS)
def test_fp32_matches_transformers(name):
    torch.manual_seed(0)
    hf = getattr(hf_ibert, name)(transformers.IBertConfig(**TINY)).eval()
    ours = getattr(ibert, name)(IBertConfig(**TINY)).eval()
    missing, _ = ours.load_state_dict(hf.state_dict(), strict=False)
    assert all(k.endswith(("x_min", "x_max")) for k in missing)
    inputs = inputs_for(name, *batch())
    with torch.no_grad():
        a, b = hf(**inputs), ours(**inputs)
    compared = 0
    for key, value in a.items():
        if torch.is_tensor(value):
            assert torch.allclose(value, b[key], atol=1e-5, rtol=0), key
            compared += 1
    assert compared


def test_config_validation_lists_choices():
    with pytest.raises(ValueError, match="force_dequant must be one of"):
        IBertConfig(force_dequant="foo")
    with pytest.raises(ValueError, match="hidden_act must be one of"):
        IBertConfig(quant_mode=True, hidden_act="relu")
    with pytest.raises(ValueError, match="position_embedding_type"):
        IBertConfig(position_embedding_type="relative_key")
    assert IBertConfig(hidden_act="relu").hidden_act == "relu"
    c = IBertConfig()
    assert (c.vocab_size, c.hidden_size, c.num_hidden_layers, c.pad_token_id, c.layer_norm_eps) == (30522, 768, 12, 1, 1e-12)


@pytest.mark.parametrize("force_dequant", ["none", "gelu", "softmax", "layernorm", "nonlinear"])
def test_fake_quant_trains(force_dequant):
    torch.manual_seed(0)
    model = ibert.IBertForSequenceClassification(IBertConfig(**TINY, quant_mode=True, force_dequant=force_dequant))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ids, mask = batch()
    labels = torch.tensor([0, 1, 1])
    losses = []
    for _ in range(3):
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    q = model.ibert.encoder.layer[0].attention.self.query
    assert q.weight.grad is not None and q.weight.grad.abs().sum() > 0
    assert model.ibert.embeddings.word_embeddings.weight.grad.abs().sum() > 0
    assert all(torch.isfinite(torch.tensor(losses)))


def test_straight_through_value_is_exact_and_gradient_passes():
    from ibert.quant import ste

    x = torch.randn(5, requires_grad=True)
    y_float = x * 3
    y_exact = torch.round(y_float.detach() * 1e6)  # far from y_float: float rounding would show
    y = ste(y_float, y_exact)
    assert torch.equal(y, y_exact)
    y.sum().backward()
    assert torch.equal(x.grad, torch.full((5,), 3.0))
    with torch.no_grad():
        assert torch.equal(ste(y_float, y_exact), y_exact)


def test_quant_embedding_quantizes_looked_up_rows_like_the_table():
    from ibert.quant import QuantEmbedding, quantize_weight

    emb = QuantEmbedding(50, 8, padding_idx=1, quant_mode=True)
    ids = torch.randint(0, 50, (3, 7))
    out, s = emb(ids)
    table = quantize_weight(emb.weight, s, 8) * s
    assert torch.equal(out, torch.nn.functional.embedding(ids, table))
    out.sum().backward()
    assert emb.weight.grad[ids[0, 0]].abs().sum() > 0


def test_frozen_weights_are_quantized_once_per_version():
    """Without gradients the quantized weight is cached; a change of the weight (in place, an optimizer step, a new
    tensor, or through `.data` followed by `.eval()`) is seen, and values equal the uncached gradient-mode ones."""
    from ibert.quant import QuantEmbedding, QuantLinear

    torch.manual_seed(0)
    lin, emb = QuantLinear(8, 5, quant_mode=True), QuantEmbedding(20, 8, quant_mode=True)
    x, s_x, ids = torch.randn(3, 8).round() * 0.1, torch.tensor([0.1]), torch.arange(6)
    lin.weight.grad, emb.weight.grad = torch.ones_like(lin.weight), torch.ones_like(emb.weight)
    opt = torch.optim.SGD([lin.weight, emb.weight], lr=0.5)
    changes = (lambda: None, lambda: lin.weight.mul_(-3), opt.step, lambda: (emb.weight.data.mul_(2), emb.eval()),
               lambda: setattr(lin, "weight", torch.nn.Parameter(torch.randn(5, 8))))
    for change in changes:
        with torch.no_grad():
            change()
        expected = lin(x, s_x)[0], emb(ids)[0]  # gradient mode: recomputed
        with torch.no_grad():
            for _ in range(2):
                assert torch.equal(lin(x, s_x)[0], expected[0]) and torch.equal(emb(ids)[0], expected[1])
    assert set(lin.__dict__["_frozen_cache"]) == {"weight"} and set(emb.__dict__["_frozen_cache"]) == {"scale"}


def test_engine_packs_each_weight_once_and_again_when_it_changes(tmp_path):
    """The engine holds each linear weight in its kernel's layout: made on first use, kept across forwards, made
    again after a load (in place), a replacement or a move; the outputs stay those of the bare weights."""
    engine = convert_to_integer(calibrated("IBertForSequenceClassification"))
    ids, mask = batch()
    first = engine(input_ids=ids, attention_mask=mask).logits
    lin = engine.ibert.layers[0].ffn_in
    held = lin.packed()
    engine(input_ids=ids, attention_mask=mask)
    assert lin.packed() is held and held.weight is lin.weight
    save_integer(engine, tmp_path / "int")
    other = load_integer(tmp_path / "int")
    engine.load_state_dict(other.state_dict())  # copies in place: a new version of the same tensor
    assert lin.packed() is not held and torch.equal(engine(input_ids=ids, attention_mask=mask).logits, first)
    lin.weight = -lin.weight
    changed = engine(input_ids=ids, attention_mask=mask).logits
    assert lin.packed().weight is lin.weight and not torch.equal(changed, first)
    lin.weight = -lin.weight
    assert torch.equal(engine(input_ids=ids, attention_mask=mask).logits, first)


def test_scales_propagate_between_layers():
    """Each layer's input scale is the previous layer's output scale (transformers passes the embedding's)."""
    model = calibrated("IBertModel")
    seen = []
    hooks = [layer.register_forward_hook(lambda mod, args, out: seen.append((args[1], out[1])))
             for layer in model.encoder.layer]
    with torch.no_grad():
        model(**inputs_for("IBertModel", *batch()))
    for h in hooks:
        h.remove()
    assert torch.equal(seen[1][0], seen[0][1]) and not torch.equal(seen[1][0], seen[0][0])


@pytest.mark.parametrize("smoothquant", [False, True])
@pytest.mark.parametrize("name", HEADS)
def test_integer_engine_equals_fake_quant(name, smoothquant):
    model = smoothed(name) if smoothquant else calibrated(name)
    engine = convert_to_integer(model)
    inputs = inputs_for(name, *batch(7))
    with torch.no_grad():
        a = model(**inputs, output_hidden_states=True)
        b = engine(**inputs, output_hidden_states=True)
    for ha, hb in zip(a.hidden_states, b.hidden_states):
        assert torch.equal(ha, hb)
    for key, value in a.items():
        if torch.is_tensor(value):
            assert torch.equal(value, b[key]), key


def smoothed(name="IBertForSequenceClassification", alpha=0.5):
    """`calibrated` with per-channel LayerNorm and i-GELU outputs (smoothquant, smoothquant_gelu), both smoothed
    at `alpha`."""
    model = calibrated(name, smoothquant=True, smoothquant_gelu=True)
    base = model if name == "IBertModel" else model.ibert
    base.smooth_layernorm_outputs(alpha)
    base.smooth_gelu_outputs(alpha)
    return model


def test_smoothquant_scales():
    """alpha 1: each LayerNorm output channel its own range; alpha 0: the scales follow the readers' weights
    only; a model without smoothquant refuses."""
    model = smoothed("IBertModel", alpha=1.0)
    acts = [model.embeddings.output_activation] + [m.output_activation for layer in model.encoder.layer
                                                   for m in (layer.attention.output, layer.output)]
    for act in acts:
        assert act.scale().shape == (TINY["hidden_size"],)
        assert torch.allclose(act.scale(), act.channel_range() / 127, rtol=1e-5)
    model.smooth_layernorm_outputs(0.0)
    w = model.encoder.layer[0].intermediate.dense.weight.abs().amax(0)
    s = model.encoder.layer[0].attention.output.output_activation.smoothing
    assert torch.allclose(s, (1 / w) / (1 / w).max())
    with pytest.raises(ValueError, match="alpha must be in"):
        model.smooth_layernorm_outputs(1.5)
    with pytest.raises(ValueError, match="smoothquant=True"):
        calibrated("IBertModel").smooth_layernorm_outputs(0.5)


def test_smoothquant_gelu_scales():
    """The i-GELU outputs: alpha 1 gives each channel its own range, alpha 0 follows the FFN output weights'
    columns; the LayerNorm outputs stay per tensor unless asked; a model without smoothquant_gelu refuses."""
    model = calibrated("IBertModel", smoothquant_gelu=True)
    model.smooth_gelu_outputs(1.0)
    for layer in model.encoder.layer:
        act = layer.intermediate.output_activation
        assert act.scale().shape == (TINY["intermediate_size"],)
        assert torch.allclose(act.scale(), act.channel_range() / 127, rtol=1e-5)
        assert layer.output.output_activation.scale().shape == (1,)
    model.smooth_gelu_outputs(0.0)
    w = model.encoder.layer[1].output.dense.weight.abs().amax(0)
    assert torch.allclose(model.encoder.layer[1].intermediate.output_activation.smoothing, (1 / w) / (1 / w).max())
    with pytest.raises(ValueError, match="alpha must be in"):
        model.smooth_gelu_outputs(-0.1)
    with pytest.raises(ValueError, match="smoothquant_gelu=True"):
        calibrated("IBertModel").smooth_gelu_outputs(0.5)


def test_integer_engine_hidden_states_are_integers():
    engine = convert_to_integer(calibrated("IBertModel"))
    ids, mask = batch()
    x = engine.encode(ids, mask, torch.zeros_like(ids), ibert.modeling.position_ids_from_input_ids(ids, 1))
    assert x.dtype == torch.int8 and x.abs().max() <= 127


class DtypeRecorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.float_ops, self.ops = [], set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops.add(str(func))
        tensors = [t for t in torch.utils._pytree.tree_leaves((args, kwargs, out)) if isinstance(t, torch.Tensor)]
        if any(t.is_floating_point() for t in tensors):
            self.float_ops.append(str(func))
        return out


# the float32 GEMM route's ops: int8 -> float32, the product, float32 -> int32 (exact: `gemm._int_mm_fp32`)
FLOAT32_GEMM_OPS = {"aten._to_copy.default", "aten.mm.default", "aten.bmm.default", "aten.expand.default",
                    "aten.alias.default", "aten.view.default", "aten._unsafe_view.default"}


@pytest.mark.parametrize("route", ["int8", "fp32"])
def test_no_float_op_between_embedding_lookup_and_head(route, gemm_route):
    """Integer-only: no float op at all on the int8 GEMM route; on the float32 route (CPUs without an int8 dot
    product) none but the exact GEMMs'."""
    gemm_route(route)
    engine = convert_to_integer(calibrated("IBertForSequenceClassification"))
    ids, mask = batch()
    types, pos = torch.zeros_like(ids), ibert.modeling.position_ids_from_input_ids(ids, 1)
    with DtypeRecorder() as rec:
        engine.ibert.encode(ids, mask, types, pos)
    if route == "int8":
        assert rec.float_ops == []
    else:
        assert set(rec.float_ops) <= FLOAT32_GEMM_OPS and (cpp_available() or rec.float_ops)
    if cpp_available():  # the C++ kernels are registered ops: their tensors are checked too
        assert {"ibert.encoder_layer_cpp.default", "ibert.layernorm_cpp.default"} <= rec.ops
    with DtypeRecorder() as rec:  # the recorder does see float ops: the head runs in float
        engine(input_ids=ids, attention_mask=mask)
    assert rec.float_ops


@pytest.mark.parametrize("backend,isa", [("triton", None), pytest.param("cpp", "amx_int8", marks=pytest.mark.amx),
                                         pytest.param("cpp", "avx512_vnni", marks=pytest.mark.cpp),
                                         pytest.param("cpp", "avx2", marks=pytest.mark.cpp)])
@pytest.mark.parametrize("smoothquant", [False, True])
def test_integer_engine_backend_equals_torch(backend, isa, smoothquant, monkeypatch):
    """Every kernel path gives the torch path's integers: Triton, the C++ encoder layers on each instruction set;
    with per-tensor and per-channel (smoothquant) LayerNorm outputs."""
    if isa:
        force_isa(monkeypatch, isa)
    engine = convert_to_integer(smoothed("IBertModel") if smoothquant else calibrated("IBertModel"))
    ids, mask = batch(3)
    head_mask = torch.tensor([[1, 0, 1, 1], [1, 1, 1, 1]], dtype=torch.uint8)
    args = (ids, mask, torch.zeros_like(ids), ibert.modeling.position_ids_from_input_ids(ids, 1))
    engine.config.backend = "torch"
    expected = engine.encode(*args)
    expected_kept = engine.encode(*args, head_mask, keep=True)
    engine.config.backend = backend
    if backend == "triton":  # on the GPU where there is one
        engine, args, head_mask = engine.to(DEVICE), on_device(args), on_device(head_mask)
    assert torch.equal(engine.encode(*args).cpu(), expected)
    for got, want in zip(torch.utils._pytree.tree_leaves(engine.encode(*args, head_mask, keep=True)),
                         torch.utils._pytree.tree_leaves(expected_kept)):  # every layer's output and probabilities
        assert torch.equal(got.cpu(), want)


@pytest.mark.parametrize("smoothquant", [False, True])
def test_integer_engine_save_load_roundtrip(tmp_path, smoothquant):
    engine = convert_to_integer(smoothed("IBertForMaskedLM") if smoothquant else calibrated("IBertForMaskedLM"))
    save_integer(engine, tmp_path)
    loaded = load_integer(tmp_path)
    ids, mask = batch()
    with torch.no_grad():
        assert torch.equal(engine(input_ids=ids, attention_mask=mask).logits,
                           loaded(input_ids=ids, attention_mask=mask).logits)
    assert loaded.ibert.layers[0].qkv.weight.dtype == torch.int8


def test_integer_engine_corrupt_or_mismatched_checkpoint(tmp_path):
    engine = convert_to_integer(calibrated("IBertForSequenceClassification"))
    save_integer(engine, tmp_path)
    weights = tmp_path / "integer_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt"):
        load_integer(tmp_path)
    save_integer(engine, tmp_path)
    cfg = (tmp_path / "config.json").read_text().replace('"num_hidden_layers": 2', '"num_hidden_layers": 3')
    (tmp_path / "config.json").write_text(cfg)
    with pytest.raises(ValueError, match="does not match"):
        load_integer(tmp_path)
    with pytest.raises(ValueError, match="missing"):
        load_integer(tmp_path / "nowhere")


def test_conversion_refuses_what_it_cannot_run():
    with pytest.raises(ValueError, match="quant_mode=True"):
        convert_to_integer(ibert.IBertModel(IBertConfig(**TINY)))
    with pytest.raises(ValueError, match="force_dequant='none'"):
        convert_to_integer(calibrated("IBertModel", force_dequant="gelu"))
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="never observed"):
        convert_to_integer(ibert.IBertModel(IBertConfig(**TINY, quant_mode=True)))


def test_save_pretrained_roundtrip_keeps_ranges(tmp_path):
    model = calibrated("IBertForSequenceClassification")
    model.save_pretrained(tmp_path)
    loaded = ibert.IBertForSequenceClassification.from_pretrained(tmp_path).eval()
    auto = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert isinstance(auto, ibert.IBertForSequenceClassification)
    ids, mask = batch()
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask).logits
        assert torch.equal(loaded(input_ids=ids, attention_mask=mask).logits, ref)
        assert torch.equal(auto(input_ids=ids, attention_mask=mask).logits, ref)


def test_bad_inputs_raise_clear_errors():
    model = ibert.IBertModel(IBertConfig(**TINY)).eval()
    ids, mask = batch()
    with pytest.raises(ValueError, match="token ids must be in"):
        model(input_ids=ids + 100)
    with pytest.raises(ValueError, match="exceeds the position table"):
        model(input_ids=torch.full((1, 39), 5))
    with pytest.raises(ValueError, match="attention_mask must have the shape"):
        model(input_ids=ids, attention_mask=mask[:, :5])
    with pytest.raises(ValueError, match="empty batch"):
        model(input_ids=ids[:0])
    with pytest.raises(ValueError, match="exactly one of"):
        model()


def test_fake_quant_gelu_requantizes_its_integers_exactly():
    """i-GELU's int32 results reach 2**30, where a float32 holds only every 64th integer. An output range with a
    rounding boundary between one such result and its float32 neighbour tells an exact requantization (the
    engine's) from a round trip through float."""
    from ibert.quant import IntGELU, QuantAct

    s = torch.tensor([2e-4])
    q16 = torch.arange(-32767, 32768, 7, dtype=torch.int32)
    params, s_g = kernels.gelu_params(s)
    g = kernels.gelu(q16, params)
    through_float = torch.round(g.float() * s_g / s_g).int()  # what a float32 round trip hands on
    out_act = QuantAct(8, quant_mode=True)
    for i in torch.nonzero(through_float != g).flatten().flip(0).tolist():  # put a boundary between the two
        out_act.x_max.fill_(127 * float(s_g) * (g[i] + through_float[i]).item() / 2 / 100.5)
        m, e = out_act.multiplier(s_g)
        if not torch.equal(kernels.requantize(through_float, m, e, 8), kernels.requantize(g, m, e, 8)):
            break
    else:
        raise AssertionError("no output range separates a result from its float32 neighbour")
    gelu = IntGELU(quant_mode=True).eval()
    y, s_out = gelu(q16.float() * s, s, out_act)
    assert torch.equal(torch.round(y / s_out).to(torch.int8), kernels.requantize(g, m, e, 8))


def test_integer_engine_equals_fake_quant_at_roberta_base_width():
    """768 wide, FFN 3072 (K = 3072 accumulators), activations spread over every range they are calibrated on."""
    torch.manual_seed(0)
    model = ibert.IBertModel(IBertConfig(quant_mode=True, num_hidden_layers=2, vocab_size=99,
                                         max_position_embeddings=70), add_pooling_layer=False).train()
    ids = torch.randint(2, 99, (2, 64), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        model(input_ids=ids)
        model.eval()
        expected = model(input_ids=ids, output_hidden_states=True).hidden_states
        got = convert_to_integer(model)(input_ids=ids, output_hidden_states=True).hidden_states
    for a, b in zip(expected, got):
        assert torch.equal(a, b)


def test_scales_that_cannot_be_integers_are_clear_errors():
    with pytest.raises(RuntimeError, match="ratio must be finite"):
        kernels.dyadic(torch.tensor([0.5, float("nan")]))
    with pytest.raises(RuntimeError, match="ratio must be finite"):
        kernels.dyadic(torch.tensor([float("inf")]))
    for bad in (0.0, -1e-3, float("nan")):
        with pytest.raises(RuntimeError, match="scale must be positive and finite"):
            kernels.gelu_params(torch.tensor(bad))
    model = calibrated("IBertModel")
    model.encoder.layer[1].output.ln_input_act.x_max.fill_(float("nan"))
    with pytest.raises(ValueError, match="NaN or infinite.*encoder.layer.1.output.ln_input_act"):
        convert_to_integer(model)


def test_head_mask_values_other_than_0_and_1_are_refused():
    qkv = torch.zeros(1, 3, 3 * 2 * 4, dtype=torch.int8)
    m, e = kernels.dyadic(torch.tensor([0.01], dtype=torch.float64))
    for backend in ("torch", "triton"):
        with pytest.raises(ValueError, match="head_mask must hold zeros and ones only"):
            kernels.attention(qkv, 2, kernels.softmax_params(torch.tensor(1e-3)), m, e,
                              head_mask=torch.tensor([1, 2], dtype=torch.uint8), backend=backend)


@pytest.mark.parametrize("name", ["IBertModel", "IBertForSequenceClassification", "IBertForMaskedLM"])
def test_engine_save_pretrained_and_from_pretrained(tmp_path, name):
    """The HuggingFace verbs on an engine: save_pretrained writes the integer format, from_pretrained of it returns
    the engine (equal outputs), and no class silently initialises a float model from it."""
    engine = convert_to_integer(calibrated(name))
    engine.save_pretrained(tmp_path)
    assert (tmp_path / "integer_model.safetensors").is_file() and not (tmp_path / "model.safetensors").exists()
    loaded = getattr(ibert, name).from_pretrained(tmp_path)
    assert type(loaded) is type(engine)
    inputs = inputs_for(name, *batch(5))
    with torch.no_grad():
        a, b = engine(**inputs), loaded(**inputs)
    assert torch.equal(a[0], b[0])
    other = "IBertForQuestionAnswering"
    with pytest.raises(ValueError, match=f"holds an integer engine of .*not {other}"):
        getattr(ibert, other).from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="integer engine"):
        load_pretrained(getattr(ibert, name), tmp_path)


def test_transformers_ibert_checkpoint_loads_without_unexpected_keys(tmp_path):
    """transformers' QuantAct buffers of its softmax and LayerNorm (which this implementation does not have) are
    known and ignored; the ranges of the activations both have are read."""
    torch.manual_seed(0)
    hf = hf_ibert.IBertForSequenceClassification(transformers.IBertConfig(**TINY, quant_mode=True))
    hf.ibert.encoder.layer[0].attention.self.query_activation.x_max.fill_(3.5)
    hf.save_pretrained(tmp_path)
    ours, info = ibert.IBertForSequenceClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["unexpected_keys"] and not info["missing_keys"]
    assert float(ours.ibert.encoder.layer[0].attention.self.query_activation.x_max) == 3.5


def test_large_query_key_ranges_are_clipped_to_the_softmax_domain():
    """Q and K ranges so large that s_q s_k / sqrt(d) would exceed ln2 / 8 (where i-softmax has fewer than 8
    steps per ln2) are clipped: QAT keeps training, and the engine still computes the fake-quant integers."""
    from kernels.softmax import MAX_SCALE

    torch.manual_seed(0)
    model = ibert.IBertForSequenceClassification(IBertConfig(**{**TINY, "quant_mode": True}))
    att = model.ibert.encoder.layer[0].attention.self
    with torch.no_grad():
        att.query.weight.mul_(300.0)
        att.key.weight.mul_(300.0)
    model.train()
    with pytest.warns(UserWarning, match="clipped"):
        for s in range(3):
            ids, mask = batch(s)
            model(input_ids=ids, attention_mask=mask, labels=torch.zeros(3, dtype=torch.long)).loss.backward()
    wanted = att.query_activation.range_scale() * att.key_activation.range_scale() / math.sqrt(att.head_size)
    s_scores = att.query_activation.scale() * att.key_activation.scale() / math.sqrt(att.head_size)
    assert wanted.item() > 4 * MAX_SCALE and MAX_SCALE * 0.999 < s_scores.item() <= MAX_SCALE
    model.eval()
    engine = convert_to_integer(model)
    ids, mask = batch()
    with torch.no_grad():
        assert torch.equal(engine(input_ids=ids, attention_mask=mask).logits,
                           model(input_ids=ids, attention_mask=mask).logits)


def test_query_key_ranges_within_the_softmax_domain_are_left_alone():
    model = calibrated()
    for layer in model.ibert.encoder.layer:
        att = layer.attention.self
        for act in (att.query_activation, att.key_activation):
            assert torch.equal(act.scale(), act.range_scale())
