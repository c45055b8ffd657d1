"""Convert a raw DPR training checkpoint (*.cp) into our encoder dirs.

    python -m utils.convert_dpr_checkpoint --checkpoint hf_bert_base.cp --output_dir OUT \\
        [--tokenizer T] [--hf_dpr]

writes OUT/query_encoder and OUT/doc_encoder: plain HF BERT dirs (BertModel.from_pretrained works on them),
or with --hf_dpr DPRQuestionEncoder / DPRContextEncoder dirs. Every script takes either kind, and the .cp
itself, through utils.models.load_encoder; converting once saves re-reading the checkpoint each run.
"""

import argparse
import os
import sys

if __package__ in (None, ""):  # `python utils/convert_dpr_checkpoint.py`: make the `utils` package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.dpr_checkpoint import checkpoint_tokenizer, describe, encoder_from_state, read_dpr_checkpoint
from utils.errors import EncoderError, HelpFormatter
from utils.files import atomic_dir
from utils.models import quiet_transformers, save_encoder
from utils.towers import TOWER_DIRS


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--checkpoint", required=True, help="DPR .cp file written by train_dense_encoder.py")
    p.add_argument("--output_dir", required=True)
    p.add_argument(
        "--tokenizer",
        help="tokenizer name or dir (default: the checkpoint's pretrained_model_cfg, else bert-base-uncased)",
    )
    p.add_argument(
        "--hf_dpr", action="store_true", help="write transformers DPRQuestionEncoder/DPRContextEncoder dirs"
    )
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        print(
            f"reading {args.checkpoint} (restricted unpickler: tensors, plain containers, omegaconf configs "
            "only)"
        )
        state = read_dpr_checkpoint(args.checkpoint)
        print(describe(state, args.checkpoint))
        tokenizer = checkpoint_tokenizer(state, args.checkpoint, args.tokenizer)
        for role, name in TOWER_DIRS.items():
            with quiet_transformers():
                model, pooling = encoder_from_state(state, role, args.checkpoint, hf_dpr=args.hf_dpr)
            if pooling == "pooler_output" and not args.hf_dpr:
                print(
                    f"note: the {role} encoder has a projection (encode_proj), which a plain BertModel dir "
                    "cannot "
                    f"hold: writing it as a transformers {type(model).__name__} dir"
                )
            out = os.path.join(args.output_dir, name)
            with atomic_dir(out, os.path.join(args.output_dir, f".{name}.tmp")) as tmp:
                save_encoder(model, tokenizer, tmp, role, converted_from=os.path.abspath(args.checkpoint))
            cfg = model.config
            print(
                f"wrote {out}: {role} encoder, {type(model).__name__}, {cfg.num_hidden_layers} layers, "
                f"hidden {cfg.hidden_size}, projection {getattr(cfg, 'projection_dim', 0)}"
            )
    except EncoderError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
