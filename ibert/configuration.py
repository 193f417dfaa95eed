"""IBertConfig: HuggingFace's fields and defaults, plus what the integer paths need."""
from __future__ import annotations

from transformers import PretrainedConfig

from kernels import BACKENDS

FORCE_DEQUANT = ("none", "gelu", "softmax", "layernorm", "nonlinear")


class IBertConfig(PretrainedConfig):
    """Configuration of the I-BERT models (checkpoint-compatible with transformers' `IBertConfig`).

    quant_mode: False runs fp32; True runs fake quantization (QAT), convertible to the integer engine.
    force_dequant: one of "none", "gelu", "softmax", "layernorm", "nonlinear": nonlinearities kept in float.
    act_bits, weight_bits, embedding_act_bits, ln_input_bits, gelu_input_bits, softmax_bits: bit widths
        (8, 8, 16, 22, 16, 8 as in the paper; the 16-bit GELU input is ours, see the README).
    smoothquant: False: one scale per LayerNorm output tensor, as in the paper; True: a scale per channel, its
        smoothing migrated into the weights of the linears that read it (SmoothQuant; `smooth_layernorm_outputs`),
        which spares the other channels the outliers of a few (BERT's residual stream has them).
    smoothquant_gelu: the same for each i-GELU output (`smooth_gelu_outputs`), read by the FFN's output dense.
    backend: how the integer engine runs its kernels ("auto": Triton on CUDA; on the CPU the C++ kernels where
        they build, else the torch reference; or "triton", "torch", "cpp").
    """

    model_type = "ibert"

    def __init__(
        self,
        vocab_size: int = 30522,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        intermediate_size: int = 3072,
        hidden_act: str = "gelu",
        hidden_dropout_prob: float = 0.1,
        attention_probs_dropout_prob: float = 0.1,
        max_position_embeddings: int = 512,
        type_vocab_size: int = 2,
        initializer_range: float = 0.02,
        layer_norm_eps: float = 1e-12,
        pad_token_id: int = 1,
        bos_token_id: int = 0,
        eos_token_id: int = 2,
        position_embedding_type: str = "absolute",
        quant_mode: bool = False,
        force_dequant: str = "none",
        act_bits: int = 8,
        weight_bits: int = 8,
        embedding_act_bits: int = 16,
        ln_input_bits: int = 22,
        gelu_input_bits: int = 16,
        softmax_bits: int = 8,
        smoothquant: bool = False,
        smoothquant_gelu: bool = False,
        backend: str = "auto",
        tie_word_embeddings: bool = True,
        **kwargs,
    ):
        super().__init__(pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id, **kwargs)
        self.tie_word_embeddings = tie_word_embeddings
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.max_position_embeddings = max_position_embeddings
        self.type_vocab_size = type_vocab_size
        self.initializer_range = initializer_range
        self.layer_norm_eps = layer_norm_eps
        self.position_embedding_type = position_embedding_type
        self.quant_mode = quant_mode
        self.force_dequant = force_dequant
        self.act_bits = act_bits
        self.weight_bits = weight_bits
        self.embedding_act_bits = embedding_act_bits
        self.ln_input_bits = ln_input_bits
        self.gelu_input_bits = gelu_input_bits
        self.softmax_bits = softmax_bits
        self.smoothquant = smoothquant
        self.smoothquant_gelu = smoothquant_gelu
        self.backend = backend
        self.validate()

    def validate(self) -> None:
        """Raise ValueError, listing the choices, for a value the model cannot run."""
        if self.force_dequant not in FORCE_DEQUANT:
            raise ValueError(f"force_dequant must be one of {FORCE_DEQUANT}, got {self.force_dequant!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be a multiple of num_attention_heads "
                             f"({self.num_attention_heads})")
        supported_act = ("gelu",) if self.quant_mode else ("gelu", "relu", "gelu_new", "silu", "tanh")
        if self.hidden_act not in supported_act:
            raise ValueError(f"hidden_act must be one of {supported_act} (quant_mode={self.quant_mode}), "
                             f"got {self.hidden_act!r}")
        if self.position_embedding_type != "absolute":
            raise ValueError(f"position_embedding_type must be one of ('absolute',), got {self.position_embedding_type!r}")
        for name, lo, hi in (("act_bits", 2, 8), ("weight_bits", 2, 8), ("embedding_act_bits", 8, 16),
                             ("ln_input_bits", 8, 24), ("gelu_input_bits", 8, 16), ("softmax_bits", 2, 8)):
            v = getattr(self, name)
            if not isinstance(v, int) or not lo <= v <= hi:
                raise ValueError(f"{name} must be an int in [{lo}, {hi}], got {v!r}")

    @property
    def dequant(self) -> set[str]:
        """The nonlinearities that run in float."""
        if self.force_dequant == "nonlinear":
            return {"gelu", "softmax", "layernorm"}
        return set() if self.force_dequant == "none" else {self.force_dequant}
