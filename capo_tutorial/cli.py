"""The ``capo`` command: ``capo train``, ``eval``, ``plan``, ``audit`` and ``testbed``.

Every RunConfig field is a flag of ``train`` and ``plan`` (``--learning-rate 1e-4``), on top of a
profile (``--profile smoke|cpu|gpu``, default: CAPO_PROFILE or the hardware). Dict and list fields
take JSON (``--loss-params '{"gamma": 1.0, "confidence": "reference"}'``). ``eval`` takes a run's
folder; ``audit`` and ``testbed`` have flags of their own (``capo audit --help``). A bad flag or
value, or a model or data set that cannot be found, ends with one line saying what is wrong, never
a traceback (set CAPO_DEBUG=1 to see one).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from capo_tutorial.config import PROFILES, RunConfig, profile_config
from capo_tutorial.testbed import add_testbed_arguments

__all__ = ["main"]


def _parse_value(kind: type, name: str):
    """An argparse ``type=`` that converts one field's text and names the flag when it cannot."""

    def parse(text: str) -> Any:
        if kind is bool:
            lowered = text.lower()
            if lowered not in {"true", "false", "1", "0", "yes", "no"}:
                raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
            return lowered in {"true", "1", "yes"}
        if kind in (dict, list):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as error:
                raise argparse.ArgumentTypeError(
                    f"expected JSON ({kind.__name__}), got {text!r}: {error.msg}"
                ) from None
            if not isinstance(value, kind):
                raise argparse.ArgumentTypeError(f"expected a JSON {kind.__name__}, got {text!r}")
            return value
        if text.lower() == "none" and name in _OPTIONAL_FIELDS:
            return None
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__}, got {text!r}") from None

    return parse


_FIELD_TYPES = {
    f.name: {"str": str, "int": int, "float": float, "bool": bool, "dict": dict, "list": list}[
        str(f.type).split(" ")[0]
    ]
    for f in dataclasses.fields(RunConfig)
}
_OPTIONAL_FIELDS = {f.name for f in dataclasses.fields(RunConfig) if "None" in str(f.type)}


def _default(f: dataclasses.Field) -> Any:
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        default=None,
        help="named profile to start from (default: CAPO_PROFILE, else gpu with CUDA, else smoke)",
    )
    group = parser.add_argument_group("run configuration (overrides the profile)")
    for f in dataclasses.fields(RunConfig):
        kind = _FIELD_TYPES[f.name]
        group.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            type=_parse_value(kind, f.name),
            default=argparse.SUPPRESS,
            metavar=kind.__name__.upper(),
            help=f"{f.metadata['help']} (default: {_default(f)!r})",
        )


def _config_from(arguments: argparse.Namespace, card: Any = None) -> RunConfig:
    overrides = {
        f.name: getattr(arguments, f.name)
        for f in dataclasses.fields(RunConfig)
        if hasattr(arguments, f.name)
    }
    return profile_config(arguments.profile, card=card, **overrides)


def _command_plan(arguments: argparse.Namespace) -> int:
    """``capo plan``: the run's memory and time on a card; exit status 2 when nothing fits."""
    from capo_tutorial.plan import CARDS, card_from_memory, detect_card, plan_run

    if arguments.card == "auto":
        card = detect_card() or CARDS["T4"]
    else:
        card = CARDS[arguments.card]
    if arguments.gpu_memory is not None:
        card = card_from_memory(arguments.gpu_memory, like=card.name if card.name in CARDS else "T4")
    config = _config_from(arguments, card=card)
    plan = plan_run(config, card)
    print(plan.describe())
    runs = arguments.runs
    print(f"  {runs} run{'s' if runs > 1 else ''} (chapter 4 trains two): ~{runs * plan.run_minutes:.0f} min")
    return 0 if plan.fits else 2


def _command_train(arguments: argparse.Namespace) -> int:
    from capo_tutorial.training import train

    config = _config_from(arguments)
    result = train(config)
    if int(os.environ.get("RANK", "0")) == 0:  # one report, also under torchrun
        print(result.evaluation.round(4).to_string())
        print(f"wrote {result.output_dir}")
    return 0


def _command_eval(arguments: argparse.Namespace) -> int:
    from capo_tutorial.evaluation import evaluate_run

    evaluation = evaluate_run(Path(arguments.run), split=arguments.split)
    print(evaluation.round(4).to_string())
    return 0


def _command_testbed(arguments: argparse.Namespace) -> int:
    from capo_tutorial.testbed import run_testbed_command

    run_testbed_command(arguments)
    return 0


def _command_audit(arguments: argparse.Namespace) -> int:
    """``capo audit``: score a preference set's pairs by confidence, per language, before training."""
    from capo_tutorial.audit import audit_preferences

    overrides = dict(arguments.overrides)
    for name in ("noise", "systematic_noise", "seed"):
        if getattr(arguments, name) is not None:
            overrides[name] = getattr(arguments, name)
    if arguments.model is not None and overrides:
        raise ValueError(
            "--noise, --systematic-noise, --seed and --overrides change the profile's run: "
            "they do not apply with --model"
        )
    result = audit_preferences(
        arguments.data,
        arguments.model,
        profile=arguments.profile,
        overrides=overrides,
        split=arguments.split,
        data_config=arguments.data_config,
        column_map=arguments.column_map,
        skip_invalid=arguments.skip_invalid,
        truth=arguments.truth,
        source=arguments.source,
        tau=arguments.tau,
        threshold=arguments.threshold,
        fraction=arguments.fraction,
        batch_size=arguments.batch_size,
        max_length=arguments.max_length,
        progress=not arguments.no_progress,
    )
    paths = result.save(arguments.out)
    print(result.summary())
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0


def _add_audit_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``capo audit``: one ``add_argument`` per flag with its help (over 60 lines: a
    table of flags, grouped as ``--help`` shows them, not logic)."""
    json_dict = _parse_value(dict, "overrides")
    model = parser.add_argument_group("the reference model (default: the profile's warmed-up reference)")
    model.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        default=None,
        help="profile whose data and warmed-up reference to use (default: CAPO_PROFILE, "
        "else gpu with CUDA, else smoke); the SFT warm-up is cached and reused",
    )
    model.add_argument("--noise", type=float, default=None, help="testbed share of training labels flipped")
    model.add_argument(
        "--systematic-noise",
        type=_parse_value(list, "systematic_noise"),
        default=None,
        help='testbed languages with consistent flips, JSON list, e.g. \'["ru", "ar"]\'',
    )
    model.add_argument(
        "--seed", type=int, default=None, help="the profile run's seed (testbed noise, warm-up)"
    )
    model.add_argument(
        "--overrides",
        type=json_dict,
        default={},
        help="other RunConfig fields of the profile run, JSON, e.g. '{\"sft_steps\": 100}'",
    )
    model.add_argument(
        "--model",
        default=None,
        help="instead: a `capo train` run folder (its reference), a hub id or local model "
        "folder, or 'gemma3-270m'",
    )
    model.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="tokens per row for --model (default: the run's or profile's, else 1024)",
    )
    data = parser.add_argument_group("the data (default: the profile's or run's training pairs)")
    data.add_argument("--data", default=None, help="any source load_preferences reads: hub id, file, folder")
    data.add_argument("--split", default="train", help="split of --data (default: train)")
    data.add_argument("--data-config", default=None, help="hub configuration of --data, if any")
    data.add_argument(
        "--column-map",
        type=_parse_value(dict, "column_map"),
        default=None,
        help='JSON {field: source column}, e.g. \'{"prompt": "question"}\'',
    )
    data.add_argument(
        "--skip-invalid",
        action="store_true",
        help="skip and count invalid rows (default: stop at the first, naming row and field)",
    )
    data.add_argument(
        "--truth",
        default=None,
        help="boolean column, True where a label is wrong (default: 'flipped' if present): "
        "adds AUROC, precision and recall per language",
    )
    flag = parser.add_argument_group("confidence and the suspect flag")
    flag.add_argument(
        "--source",
        default="reference",
        choices=["reference", "policy"],
        help="confidence source (before training both are the model's per-token margin)",
    )
    flag.add_argument("--tau", type=float, default=None, help="confidence temperature (default: CAPO's)")
    rule = flag.add_mutually_exclusive_group()
    rule.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="flag pairs with confidence below this (default 0.5: d_ref < 0)",
    )
    rule.add_argument(
        "--fraction",
        type=float,
        default=None,
        help="instead, flag each language's least confident share (e.g. 0.2)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="pairs per forward pass (default: the run's, else 32)"
    )
    parser.add_argument("--out", default="audit", help="folder for pairs.csv, languages.csv, audit.png")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _card_names() -> list[str]:
    from capo_tutorial.plan import CARDS

    return list(CARDS)


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (what is wrong, and where the help is)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="capo", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    train_parser = commands.add_parser(
        "train", help="train a policy (SFT warm-up, then preference optimisation)"
    )
    _add_config_flags(train_parser)
    train_parser.set_defaults(handler=_command_train)
    eval_parser = commands.add_parser("eval", help="evaluate a finished run's final checkpoint on a split")
    eval_parser.add_argument("run", help="the run's output folder (holds config.json and checkpoints)")
    eval_parser.add_argument(
        "--split", default=None, help="split to evaluate (default: the run's eval_split)"
    )
    eval_parser.set_defaults(handler=_command_eval)
    testbed_parser = commands.add_parser(
        "testbed", help="write the offline testbed as JSONL with a data card"
    )
    add_testbed_arguments(testbed_parser)
    testbed_parser.set_defaults(handler=_command_testbed)
    plan_parser = commands.add_parser(
        "plan", help="memory and time of a run on a GPU: what fits a card, and how long it takes"
    )
    plan_parser.add_argument(
        "--card",
        choices=["auto", *_card_names()],
        default="auto",
        help="the GPU to plan for (default: the one this machine has, else a T4)",
    )
    plan_parser.add_argument(
        "--gpu-memory",
        type=float,
        default=None,
        metavar="GIB",
        help="GPU memory to plan for, in GiB (default: the card's; a free Colab T4 leaves about 15)",
    )
    plan_parser.add_argument("--runs", type=int, default=2, help="runs to add up for the total time")
    _add_config_flags(plan_parser)
    plan_parser.set_defaults(handler=_command_plan)
    audit_parser = commands.add_parser(
        "audit", help="find the suspect pairs of a preference set, per language, before training"
    )
    _add_audit_arguments(audit_parser)
    audit_parser.set_defaults(handler=_command_audit)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``capo`` console script; returns the exit status."""
    parser = build_parser()
    arguments = parser.parse_args(argv)
    try:
        return arguments.handler(arguments)
    except (ValueError, FileNotFoundError, ImportError, KeyError) as error:
        if os.environ.get("CAPO_DEBUG"):
            raise
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"capo {arguments.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
