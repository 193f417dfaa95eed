"""I-BERT with HuggingFace's API: fp32, fake-quant (QAT) and integer-only inference."""
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForMultipleChoice,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from ibert.configuration import IBertConfig
from ibert.modeling import (
    IBertForMaskedLM,
    IBertForMultipleChoice,
    IBertForQuestionAnswering,
    IBertForSequenceClassification,
    IBertForTokenClassification,
    IBertModel,
    IBertPreTrainedModel,
)

# Replaces transformers' own "ibert" entries: checkpoints of that model type load into these classes.
AutoConfig.register("ibert", IBertConfig, exist_ok=True)
for _auto, _cls in ((AutoModel, IBertModel), (AutoModelForMaskedLM, IBertForMaskedLM),
                    (AutoModelForSequenceClassification, IBertForSequenceClassification),
                    (AutoModelForMultipleChoice, IBertForMultipleChoice),
                    (AutoModelForTokenClassification, IBertForTokenClassification),
                    (AutoModelForQuestionAnswering, IBertForQuestionAnswering)):
    _auto.register(IBertConfig, _cls, exist_ok=True)

__all__ = [
    "IBertConfig", "IBertModel", "IBertPreTrainedModel", "IBertForMaskedLM", "IBertForSequenceClassification",
    "IBertForMultipleChoice", "IBertForTokenClassification", "IBertForQuestionAnswering",
]
