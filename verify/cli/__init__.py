"""The ``verify`` command line: thin click commands over the Python API.

Each command lives in its own module under ``verify/cli/`` and is imported only
when it runs, so ``verify --help`` stays fast. Every :class:`verify.errors.VerifyError`
becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from .. import __version__
from ..errors import VerifyError

# command name -> (module under verify.cli, attribute, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "info": ("info", "info", "Show a model's layers, shapes, sizes and (with a dataset) its clean accuracy."),
    "convert": ("convert", "convert", "Convert a model between .mat (MMR / MIPVerify), .h5, .pt and .onnx."),
    "bounds": ("bounds", "bounds", "Certify with bound propagation (ibp, kw, crown, alpha-crown, lp)."),
    "attack": ("attack", "attack", "Run PGD (L1, L2, Linf) and report the attack success rate."),
    "certify": ("certify", "certify", "Attack, bound and solve the exact MIP: MMR-style lower and upper bounds."),
    "radius": ("radius", "radius", "Minimum adversarial distortion per example (exact MIP, or a certified bracket)."),
    "summary": ("batch", "summary", "Summarise a results store (table, CSV, JSON, plots)."),
    "merge": ("batch", "merge", "Merge sharded results stores into one."),
    "curve": ("curve", "curve", "Robust error against eps from a radius run: LB/UB, PGD, certified curves (CSV, PNG)."),
    "vnnlib": ("vnnlib", "vnnlib", "Verify a VNN-COMP instance (ONNX network + VNNLIB property)."),
    "analyze": ("analyze", "analyze", "Analyse a model: operator norms, Lipschitz estimates, growth ratios."),
}


def _available(name: str) -> bool:
    module = COMMANDS[name][0]
    return importlib.util.find_spec(f"verify.cli.{module}") is not None


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name in COMMANDS if _available(name)]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS or not _available(name):
            return None
        module, attr, _ = COMMANDS[name]
        command: click.Command = getattr(importlib.import_module(f"verify.cli.{module}"), attr)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="verify")
def cli() -> None:
    """relu-verify: prove or refute the robustness of ReLU networks.

    \b
    Typical use (MMR paper protocol: first 1000 test points, Linf eps 0.1):
      verify info models/mnist_cnn_small_plain.mat --dataset mnist
      verify attack  --model net.mat --p inf --eps 0.1 --dataset mnist -n 1000
      verify bounds  --model net.mat --p inf --eps 0.1 --dataset mnist --method kw
      verify certify --model net.mat --p inf --eps 0.1 --dataset mnist -n 1000 --output res.json

    Models: .mat (MMR or MIPVerify layout), .h5, .pt/.pth, .onnx. Data: MNIST,
    Fashion-MNIST, CIFAR-10 or any --inputs points.npz, found via --data-dir,
    $RELU_VERIFY_DATA, ./datasets, /usr/share/datasets or the user cache.
    Errors in the input give one line and exit code 2.
    """


def run_click(command: click.Command, argv: list[str] | None, prog_name: str, interrupted: str) -> None:
    """Run a click command the relu-verify way: bad input is one line and exit 2, never a traceback."""
    try:
        command.main(args=argv, prog_name=prog_name, standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.exceptions.ClickException as e:
        # one line, like every other input error ('COMMAND --help' teaches the options)
        hint = ""
        if isinstance(e, click.exceptions.UsageError) and e.ctx is not None:
            hint = f" (see '{e.ctx.command_path} --help')"
        click.echo(f"error: {e.format_message()}{hint}".replace("\n", " "), err=True)
        sys.exit(2 if e.exit_code in (1, 2) else e.exit_code)
    except VerifyError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo(f"interrupted: {interrupted}", err=True)
        sys.exit(130)
    except Exception as e:  # a bug, not bad input: say so, keep the traceback available
        if os.environ.get("RELU_VERIFY_DEBUG"):
            raise
        click.echo(f"internal error ({type(e).__name__}): {e}  [set RELU_VERIFY_DEBUG=1 for the traceback]", err=True)
        sys.exit(1)
    sys.exit(0)


def main(argv: list[str] | None = None) -> None:
    run_click(cli, argv, "verify", "results written so far are kept")
