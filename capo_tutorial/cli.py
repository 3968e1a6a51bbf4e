"""The ``capo`` command: ``capo train``, ``capo eval`` and ``capo testbed``.

Every RunConfig field is a flag of ``train`` and ``eval`` (``--learning-rate 1e-4``), on top of a
profile (``--profile smoke|cpu|gpu``, default: CAPO_PROFILE or the hardware). Dict and list fields
take JSON (``--loss-params '{"gamma": 1.0, "confidence": "reference"}'``). A bad flag or value ends
with one line saying what is wrong, never a traceback (set CAPO_DEBUG=1 to see one).
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


def _config_from(arguments: argparse.Namespace) -> RunConfig:
    overrides = {
        f.name: getattr(arguments, f.name)
        for f in dataclasses.fields(RunConfig)
        if hasattr(arguments, f.name)
    }
    return profile_config(arguments.profile, **overrides)


def _command_train(arguments: argparse.Namespace) -> int:
    from capo_tutorial.training import train

    config = _config_from(arguments)
    result = train(config)
    if int(os.environ.get("RANK", "0")) == 0:  # one report, also under torchrun
        print(result.evaluation.round(4).to_string())
        print(f"wrote {result.output_dir}")
    return 0


def _command_eval(arguments: argparse.Namespace) -> int:
    from capo_tutorial.training import evaluate_run

    evaluation = evaluate_run(Path(arguments.run), split=arguments.split)
    print(evaluation.round(4).to_string())
    return 0


def _command_testbed(arguments: argparse.Namespace) -> int:
    from capo_tutorial.testbed import run_testbed_command

    run_testbed_command(arguments)
    return 0


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
