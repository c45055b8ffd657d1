"""DPR's two towers: their roles, their dir names in our checkpoints, their attribute names in DPR's own
checkpoints, their transformers DPR classes, and which of their weights DPR uses."""

from transformers import DPRContextEncoder, DPRQuestionEncoder

ROLES = ("question", "passage")
# the dirs doc2embedding.py and test_dpr.py read
TOWER_DIRS = {"question": "query_encoder", "passage": "doc_encoder"}
DPR_PREFIXES = {"question": "question_model.", "passage": "ctx_model."}  # DPR's BiEncoder attribute names
DPR_CLASSES = {"question": DPRQuestionEncoder, "passage": DPRContextEncoder}


def unused_by_dpr(weight_name):
    """BERT's pooler layer: DPR pools the last layer's [CLS] state itself; the pooler may be missing or
    random."""
    return "pooler." in weight_name
