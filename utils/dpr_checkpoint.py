"""Raw DPR training checkpoints (*.cp, e.g. hf_bert_base.cp) read safely and turned into encoders.

DPR's train_dense_encoder.py saves `torch.save(CheckpointState._asdict())`: a dict with
  model_dict      both towers, keys `question_model.*` / `ctx_model.*` (HFBertEncoder = BertModel with an
                  unused pooler, optional `encode_proj` Linear; `embeddings.position_ids` in some versions)
  optimizer_dict, scheduler_dict, offset (iteration within the epoch), epoch
  encoder_params  {do_lower_case, encoder: <omegaconf DictConfig>} (hydra-era DPR, v1.0+) or a
                  flat dict {pretrained_model_cfg, projection_dim, sequence_length, ...} (pre-hydra DPR)
A pickled DictConfig makes torch.load(weights_only=True) refuse the file, and a full unpickle needs
omegaconf installed and runs whatever callables the pickle names. So we unpickle with an allowlist (tensors,
plain containers; omegaconf's classes become inert stand-ins, then plain dicts/lists). Any other global is
refused before it is called: nothing from the file runs, and omegaconf/hydra are never imported.
"""

import _compat_pickle
import builtins
import collections
import logging
import os
import pickle
import types
import zipfile

import torch
from transformers import AutoTokenizer, BertConfig, BertModel, DPRConfig

from utils.errors import EncoderError
from utils.towers import DPR_CLASSES, DPR_PREFIXES, unused_by_dpr

log = logging.getLogger(__name__)


class _Stub:
    """Inert stand-in for omegaconf's classes and typing annotations: takes any args, keeps the pickled
    state."""

    state = None

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state[0] if isinstance(state, tuple) else state


_OMEGACONF = {
    "DictConfig",
    "ListConfig",
    "AnyNode",
    "StringNode",
    "IntegerNode",
    "FloatNode",
    "BooleanNode",
    "EnumNode",
    "PathNode",
    "BytesNode",
    "LiteralNode",
    "NoneNode",
    "InterpolationResultNode",
    "UnionNode",
    "ValueNode",
    "Metadata",
    "ContainerMetadata",
}
_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    # omegaconf's resolver cache pickles as defaultdict(dict); a plain dict holds its items just as well
    ("collections", "defaultdict"): lambda *args: {},
    **{
        ("builtins", n): getattr(builtins, n)
        for n in (
            "dict",
            "list",
            "tuple",
            "set",
            "frozenset",
            "int",
            "float",
            "str",
            "bool",
            "bytes",
            "complex",
        )
    },
    **{
        ("torch._utils", n): getattr(torch._utils, n)
        for n in ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter")
    },
    # what a type annotation in omegaconf's metadata pickles to
    # (typing.Dict[str, Any] = getitem(Dict, (str, Any)))
    **{
        k: _Stub
        for k in [("enum", "Enum"), ("builtins", "type"), ("_operator", "getitem"), ("operator", "getitem")]
    },
}


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a callable or class outside the allowlist; it was not loaded, let alone called."""


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):  # torch maps storage types (torch.FloatStorage) before we are asked
        # torch.save pickles with protocol 2, so builtins arrive under their Python 2 names (__builtin__.long)
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in _ALLOWED:
            return _ALLOWED[module, name]
        # not getattr: no lazy imports
        if module == "torch" and isinstance(torch.__dict__.get(name), torch.dtype):
            return torch.__dict__[name]
        if module == "typing" or (module.split(".")[0] == "omegaconf" and name in _OMEGACONF):
            return _Stub
        raise RefusedGlobal(
            f"refusing to load '{module}.{name}': not a tensor, plain container or omegaconf config "
            "class (a DPR checkpoint needs nothing else)"
        )


# torch.load(pickle_module=...) wants a module with Unpickler and load (the legacy format calls load)
restricted_pickle = types.ModuleType("nanodpr_restricted_pickle")
restricted_pickle.Unpickler = _RestrictedUnpickler
restricted_pickle.load = lambda f, **kwargs: _RestrictedUnpickler(f, **kwargs).load()


class _SizedReader:
    """A legacy (non-zip) checkpoint file whose reads never ask for more bytes than are left: a length field
    in a corrupt file's pickle (a FRAME of 2^62 bytes) ends in a short read, never in a buffer that size."""

    def __init__(self, f):
        self.f, self.size = f, os.fstat(f.fileno()).st_size
        self.readline, self.seek, self.tell = f.readline, f.seek, f.tell

    def read(self, n=-1):
        left = max(self.size - self.f.tell(), 0)
        return self.f.read(left if n is None or n < 0 else min(n, left))


def plain(x):
    """omegaconf stand-ins -> dicts/lists/values (DictConfig/ListConfig `_content`, nodes `_val`, metadata and
    annotations None); the `_parent` link (a pickled child DictConfig drags its whole root config along) is
    dropped."""
    if isinstance(x, _Stub):
        return plain(x.state.get("_content", x.state.get("_val")) if isinstance(x.state, dict) else None)
    if isinstance(x, dict):
        return {plain(k): plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    return x


def read_dpr_checkpoint(path):
    """The checkpoint dict, encoder_params flat and plain. EncoderError if unreadable or not DPR's."""
    zipped = zipfile.is_zipfile(path)
    try:
        # mmap: the optimizer state (2x the model) is never read into memory; the legacy format can't mmap
        with open(path, "rb") as f:
            state = torch.load(
                path if zipped else _SizedReader(f),
                map_location="cpu",
                pickle_module=restricted_pickle,
                weights_only=False,
                mmap=zipped,
            )
    except RefusedGlobal as e:
        raise EncoderError(f"{path}: {e}") from None
    except MemoryError:
        raise
    except Exception as e:  # a corrupt file fails in many ways (zip, pickle, EOF, storage size ...)
        raise EncoderError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or not isinstance(state.get("model_dict"), dict):
        found = sorted(map(str, state))[:8] if isinstance(state, dict) else type(state).__name__
        raise EncoderError(f"{path}: not a DPR training checkpoint: no 'model_dict' (found {found})")
    params = plain(state.get("encoder_params"))
    params = params if isinstance(params, dict) else {}
    # hydra-era files nest the encoder settings under 'encoder', pre-hydra files do not
    encoder = params.get("encoder") if isinstance(params.get("encoder"), dict) else params
    state["encoder_params"] = {**encoder, "do_lower_case": params.get("do_lower_case")}
    return state


def _bert_config(weights, params, path):
    """BERT architecture. Sizes come from the weights (they cannot disagree with them); the rest from
    `pretrained_model_cfg` when it is a local dir with config.json (DPR's BertConfig.from_pretrained), else
    BertConfig's defaults, which are bert-base-uncased's (gelu, eps 1e-12; no hub access needed), with
    64-dim attention heads as in every Google BERT (base 12, large 16)."""
    if "embeddings.word_embeddings.weight" not in weights:
        raise EncoderError(f"{path}: model_dict has no BERT embeddings (embeddings.word_embeddings.weight)")
    name = params.get("pretrained_model_cfg")
    local = isinstance(name, str) and os.path.isfile(os.path.join(name, "config.json"))
    config = BertConfig.from_pretrained(name).to_dict() if local else {}
    vocab_size, hidden = weights["embeddings.word_embeddings.weight"].shape
    layers = {int(k.split(".")[2]) for k in weights if k.startswith("encoder.layer.")}
    arch = dict(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=len(layers),
        num_attention_heads=config.get("num_attention_heads", max(1, hidden // 64)),
        intermediate_size=weights["encoder.layer.0.intermediate.dense.weight"].shape[0]
        if layers
        else 4 * hidden,
        max_position_embeddings=weights["embeddings.position_embeddings.weight"].shape[0],
        type_vocab_size=weights["embeddings.token_type_embeddings.weight"].shape[0],
        hidden_act=config.get("hidden_act", "gelu"),
        layer_norm_eps=config.get("layer_norm_eps", 1e-12),
        pad_token_id=config.get("pad_token_id", 0),
    )
    dropout = params.get("dropout")
    if isinstance(dropout, (int, float)) and dropout != 0:  # DPR's HFBertEncoder.init_encoder rule
        arch.update(hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    return arch


def _load_weights(module, weights, path, prefix):
    try:
        missing, unexpected = module.load_state_dict(weights, strict=False)
    except RuntimeError as e:  # shape mismatch
        raise EncoderError(
            f"{path}: {prefix}* weights do not fit a BERT of the inferred shape: {e}"
        ) from None
    if missing or unexpected:
        raise EncoderError(
            f"{path}: model_dict does not match a DPR BERT encoder: missing "
            f"{[prefix + k for k in missing][:5]}, unexpected {[prefix + k for k in unexpected][:5]}"
        )


def encoder_from_state(state, role, path, hf_dpr=False):
    """(model, pooling) for `role` from a read checkpoint: a BertModel pooled at CLS, as DPR's HFBertEncoder;
    with `encode_proj` weights (or hf_dpr) a DPRQuestionEncoder/DPRContextEncoder, whose pooler_output is
    that same CLS vector passed through the projection when there is one."""
    params = state["encoder_params"]
    model_type = params.get("encoder_model_type")
    if model_type not in (None, "hf_bert"):
        raise EncoderError(
            f"{path}: encoder_model_type {model_type!r}; only DPR's hf_bert encoders are supported"
        )
    prefix = DPR_PREFIXES[role]
    weights = {k[len(prefix) :]: v for k, v in state["model_dict"].items() if k.startswith(prefix)}
    if not weights:
        found = sorted({k.split(".")[0] for k in state["model_dict"]})
        raise EncoderError(
            f"{path}: model_dict has no '{prefix}*' weights for the {role} encoder (found {found})"
        )
    proj = {k[len("encode_proj.") :]: v for k, v in weights.items() if k.startswith("encode_proj.")}
    bert = {
        k: v
        for k, v in weights.items()
        if not k.startswith("encode_proj.") and not unused_by_dpr(k) and k != "embeddings.position_ids"
    }
    arch = _bert_config(bert, params, path)
    if not proj and not hf_dpr:
        model = BertModel(BertConfig(**arch), add_pooling_layer=False)
        _load_weights(model, bert, path, prefix)
        return model.eval(), "cls"
    projection_dim = next(iter(proj.values())).shape[0] if proj else 0  # weight (out, in), bias (out,)
    model = DPR_CLASSES[role](DPRConfig(**arch, projection_dim=projection_dim))
    # base_model: question_encoder / ctx_encoder
    _load_weights(model.base_model.bert_model, bert, path, prefix)
    if proj:
        _load_weights(model.base_model.encode_proj, proj, path, prefix + "encode_proj.")
    return model.eval(), "pooler_output"


def checkpoint_tokenizer(state, path, tokenizer=None):
    """`tokenizer` if given, else the checkpoint's pretrained_model_cfg (DPR builds its tokenizer from it),
    else bert-base-uncased; do_lower_case as saved."""
    params = state["encoder_params"]
    name = tokenizer or params.get("pretrained_model_cfg") or "bert-base-uncased"
    kwargs = {"do_lower_case": params["do_lower_case"]} if isinstance(params["do_lower_case"], bool) else {}
    try:
        return AutoTokenizer.from_pretrained(name, **kwargs)
    except (OSError, ValueError) as e:
        raise EncoderError(
            f"{path}: cannot load tokenizer {name!r} ({e}); pass a local tokenizer dir"
        ) from None


def describe(state, path):
    params = state["encoder_params"]
    return (
        f"{path}: DPR checkpoint, epoch {state.get('epoch')} offset {state.get('offset')}, "
        f"pretrained_model_cfg {params.get('pretrained_model_cfg')!r}, "
        f"projection_dim {params.get('projection_dim')!r}"
    )


def load_dpr_checkpoint_encoder(path, role, tokenizer=None):
    """(model, tokenizer, pooling) for `role` from a raw DPR .cp file; see load_encoder."""
    state = read_dpr_checkpoint(path)
    log.info(describe(state, path))
    model, pooling = encoder_from_state(state, role, path)
    return model, checkpoint_tokenizer(state, path, tokenizer), pooling
