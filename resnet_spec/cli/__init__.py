"""The ``resnet-spec`` command line: the group :func:`main` and its boundary for errors.

Exit codes: 0 success, 1 a problem with the user's input (spec, weights, an output that exists) or a
failed parity check, 2 a usage error. A user's mistake prints one located message, never a traceback:
the commands raise (:class:`ResNetSpecError`, an OS error, a missing library) and :class:`_Group` alone
turns that into one ``error: ...`` line; click's usage errors print their own usage text (exit 2).

The commands, one module per group: :mod:`.specs` (list, validate, summary, resolve, diff, diagram),
:mod:`.convert`, :mod:`.checks` (parity, verify), :mod:`.files` (import, inspect); their option types,
option groups, option objects and loading helpers are :mod:`.options`.
"""

from __future__ import annotations

import signal
import threading

import click

from .. import __version__
from ..errors import ResNetSpecError, SpecError
from . import checks, convert, files, specs


class Terminated(KeyboardInterrupt):
    """SIGTERM (``timeout``, schedulers, container stops), handled like Ctrl-C: workers are stopped,
    temporaries removed, exit 143."""


def _on_sigterm(_signum, _frame):
    raise Terminated()


class _Group(click.Group):
    """Turns every :class:`ResNetSpecError` into ``error: message`` and exit code 1, an OS error into one
    line naming the path and its cause, and Ctrl-C / SIGTERM into exit 130 / 143 after cleaning up."""

    def invoke(self, ctx):
        from ..fileio import describe_os_error

        main_thread = threading.current_thread() is threading.main_thread()
        old = signal.signal(signal.SIGTERM, _on_sigterm) if main_thread else None
        try:
            return super().invoke(ctx)
        except ResNetSpecError as exc:
            click.echo(str(exc) if isinstance(exc, SpecError) else f"error: {exc}", err=True)
            ctx.exit(1)
        except ModuleNotFoundError as exc:  # an optional library that no earlier check (extras.require) caught
            from ..extras import missing_module_message

            message = missing_module_message(exc, ctx.invoked_subcommand or "resnet-spec")
            if message is None:
                raise
            click.echo(f"error: {message}", err=True)
            ctx.exit(1)
        except OSError as exc:  # a file system refusal that no earlier check caught
            click.echo(f"error: {describe_os_error(exc)}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt as exc:
            term = isinstance(exc, Terminated)
            click.echo(f"{'terminated' if term else 'interrupted'}; no partial output was left behind", err=True)
            ctx.exit(143 if term else 130)
        finally:
            if main_thread and old is not None:  # None: a handler set outside Python, left as it was
                signal.signal(signal.SIGTERM, old)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="resnet-spec")
def main():
    """Define a ResNet once in YAML; get PyTorch, TensorFlow/Keras and ONNX models with checked parity.

    SPEC is a zoo name (see 'resnet-spec list') or a path to a YAML file.
    """


for _module in (specs, convert, checks, files):
    for _command in _module.COMMANDS:
        main.add_command(_command)
