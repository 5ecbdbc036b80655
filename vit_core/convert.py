"""Convert any checkpoint the app reads into this app's own file, answering what the weights cannot tell.

    python -m vit_core.convert my_vit.pth my_vit.safetensors --num-heads 8 [--img-size 32]
        [--global-pool cls|mean] [--norm-first true|false] [--activation relu|gelu]
        [--attention-axis batch|tokens] [--name "My ViT"]

The written file (`save_checkpoint`: safetensors with the configuration inside) loads in the app
and with `load_checkpoint` without any question. When an answer is missing, the message names the
flag and its likeliest values, and nothing is written.
"""

from __future__ import annotations

import argparse
import sys

from .checkpoints import load_checkpoint, save_checkpoint
from .errors import CheckpointError
from .families import AnswerNeededError


def _bool(s: str) -> bool:
    v = s.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {s!r}")


def _size(s: str) -> int | tuple[int, int]:
    parts = s.lower().replace("x", ",").split(",")
    try:
        sides = [int(p) for p in parts if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size like 32 or 32x48, not {s!r}") from None
    if len(sides) == 1:
        return sides[0]
    if len(sides) == 2:
        return sides[0], sides[1]
    raise argparse.ArgumentTypeError(f"expected a size like 32 or 32x48, not {s!r}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m vit_core.convert", description=__doc__.split("\n\n")[0])
    p.add_argument("source", help="a checkpoint file or folder the app reads (.pth, .pt, .ckpt, .safetensors, ...)")
    p.add_argument("dest", help="where to write this app's .safetensors file")
    p.add_argument("--num-heads", type=int, default=None, help="attention heads per layer")
    p.add_argument("--img-size", type=_size, default=None, help="input size the model was built for (32 or 32x48)")
    p.add_argument("--global-pool", choices=("cls", "mean"), default=None, help="vit-pytorch ViT's pool")
    p.add_argument("--norm-first", type=_bool, default=None, help="nn.TransformerEncoderLayer's norm_first")
    p.add_argument(
        "--activation", choices=("relu", "gelu"), default=None, help="nn.TransformerEncoderLayer's activation"
    )
    p.add_argument(
        "--attention-axis", choices=("batch", "tokens"), default=None, help="the MultiheadAttention tutorial"
    )
    p.add_argument("--name", default=None, help="the model's name in the app's menu")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        model = load_checkpoint(
            args.source,
            args.num_heads,
            img_size=args.img_size,
            global_pool=args.global_pool,
            norm_first=args.norm_first,
            activation=args.activation,
            attention_axis=args.attention_axis,
        )
    except AnswerNeededError as e:
        flags = "; ".join(
            f"--{q.argument.replace('_', '-')} (likely: {', '.join(str(c) for c in q.choices[:4])})"
            for q in e.questions
        )
        print(
            f"error: the weights of {args.source} do not tell everything; give {flags}. Nothing was written.",
            file=sys.stderr,
        )
        return 2
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.name:
        model.cfg.name = args.name
    path = save_checkpoint(model, args.dest)
    print(
        f"wrote {path}: {model.cfg.name}, {model.num_params():,} parameters, {model.cfg.depth} layers x {model.cfg.num_heads} heads"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
