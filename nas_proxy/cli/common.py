"""Shared CLI machinery: option decorators, YAML config defaults, JSON output, exit codes.

Contract (docs/architecture.md):
``--config FILE.yaml`` whose keys are long flag names (the
command line wins), ``--json`` prints one JSON object on stdout while human text and progress
go to stderr, exit 0 on success, 2 on a user error (one line, no traceback), 1 on an internal
failure.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import click
import yaml

from nas_proxy.errors import UserError
from nas_proxy.launch import allocator

# Nothing here imports torch: `--help` and `--version` answer in well under a second, and each
# command imports the library it needs inside its function (tests/test_cli.py checks this).


def _version_message() -> str:
    try:
        torch_version = metadata.version("torch")  # the installed wheel's, without importing it
    except metadata.PackageNotFoundError:
        torch_version = "not installed"
    return f"%(prog)s %(version)s (torch {torch_version}, allocator {allocator()})"


def _hide_progress(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        from nas_proxy.runtime import hide_progress

        hide_progress()


# Options naming a folder the command writes into: checked before the command starts, so an
# unwritable one is a one-line error, not a failure after the work (issue 15).
OUTPUT_FOLDER_PARAMS = ("out", "cache_dir", "experts")


class _Command(click.Command):
    def invoke(self, ctx: click.Context) -> Any:
        from nas_proxy.io import require_writable_dir

        for param in self.params:
            if param.name in OUTPUT_FOLDER_PARAMS and ctx.params.get(param.name):
                require_writable_dir(ctx.params[param.name], f"--{_long_flag(param)}")
        return super().invoke(ctx)


class _Group(click.Group):
    command_class = _Command
    group_class = type  # subgroups (``data``) make their commands the same way


@click.group(
    cls=_Group,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(package_name="nas-proxy", message=_version_message())
@click.option(
    "--no-progress",
    is_flag=True,
    expose_value=False,
    callback=_hide_progress,
    help="Hide progress bars, as NAS_PROXY_NO_PROGRESS=1 does (before the command name).",
)
def main() -> None:
    """nas-proxy: distill a tiny proxy of a dataset, search architectures on it, and measure
    how faithfully the proxy ranks them.

    \b
    Typical flow:
      nas-proxy distill --dataset digits --ipc 10 --out runs/digits-mtt
      nas-proxy search --proxy runs/digits-mtt --space search_spaces/convnet.yaml --out runs/s
      nas-proxy rank --study nas-proxy --storage sqlite:///runs/s/study.db --out runs/rank
    """


def run() -> None:
    """Console-script entry point: maps exceptions onto the exit-code contract."""
    try:
        main.main(standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        click.echo("error: aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:  # bad flags, missing options, bad choices
        msg = e.format_message().replace("\n", " ")
        click.echo(f"error: {msg}", err=True)
        sys.exit(2)
    except UserError as e:
        message = str(e).strip()
        click.echo(f"error: {message.splitlines()[0] if message else type(e).__name__}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("error: interrupted", err=True)
        sys.exit(130)
    except Exception as e:  # internal failure: one line, traceback on request
        if os.environ.get("NAS_PROXY_DEBUG"):
            traceback.print_exc()
        first = (str(e).strip().splitlines() or [""])[0]
        click.echo(
            f"internal error: {type(e).__name__}: {first} (set NAS_PROXY_DEBUG=1 for a traceback)",
            err=True,
        )
        sys.exit(1)


def _load_config(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Eager callback: a YAML file of long flag names becomes the command's defaults."""
    if not value:
        return value
    data = _read_config(value)
    names = _config_names(ctx.command)
    defaults: dict[str, Any] = {}
    for key, val in data.items():
        option = names.get(str(key).lstrip("-"))
        if option is None:
            allowed = ", ".join(sorted(k for k, p in names.items() if _long_flag(p) == k))
            raise UserError(f"--config {value}: unknown key '{key}' (allowed: {allowed})")
        if getattr(option, "multiple", False) and not isinstance(val, list):
            val = [val]
        defaults[option.name] = val
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


def _read_config(value: str) -> dict[Any, Any]:
    try:
        text = Path(value).read_bytes().decode("utf-8")
        data = yaml.safe_load(text) or {}
    except FileNotFoundError:
        raise UserError(f"--config {value}: file not found") from None
    except UnicodeDecodeError:
        raise UserError(f"--config {value}: not UTF-8 text") from None
    except OSError as e:
        raise UserError(f"--config {value}: cannot read ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise UserError(f"--config {value}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UserError(f"--config {value}: expected a mapping of flag names to values")
    return data


def _long_flag(option: click.Parameter) -> str:
    """The option's first long flag without dashes (``--proxy`` -> ``proxy``)."""
    flags = [o for o in option.opts if o.startswith("--")]
    return (flags[0] if flags else option.opts[0]).lstrip("-")


def _config_names(command: click.Command) -> dict[str, click.Parameter]:
    """Config keys -> options: every long flag name (what README.md documents), and the
    parameter names (``proxy-dir``) that earlier versions accepted."""
    names: dict[str, click.Parameter] = {}
    for p in command.params:
        if not isinstance(p, click.Option) or p.name in (None, "config"):
            continue
        names[p.name.replace("_", "-")] = p
        for flag in p.opts:
            if flag.startswith("--"):
                names[flag[2:]] = p
    return names


def config_option(f: Callable) -> Callable:
    return click.option(
        "--config",
        type=click.Path(dir_okay=False),
        is_eager=True,
        expose_value=False,
        callback=_load_config,
        help="YAML file whose keys are long flag names; flags win.",
    )(f)


def proxy_option(help: str = "Proxy folder made by `nas-proxy distill`.") -> Callable:
    """``--proxy DIR`` (one proxy, passed as ``proxy_dir``)."""
    return click.option("--proxy", "proxy_dir", required=True, type=click.Path(), help=help)


def json_option(f: Callable) -> Callable:
    return click.option(
        "--json",
        "as_json",
        is_flag=True,
        help="Print one JSON object on stdout; human text goes to stderr.",
    )(f)


def seed_option(f: Callable) -> Callable:
    return click.option(
        "--seed",
        type=int,
        default=0,
        show_default=True,
        help="Seed that fixes every random choice.",
    )(f)


def device_option(f: Callable) -> Callable:
    return click.option(
        "--device",
        default="auto",
        show_default=True,
        help="auto (CUDA when present), cpu, cuda or cuda:N.",
    )(f)


def data_options(f: Callable) -> Callable:
    f = click.option(
        "--download", is_flag=True, help="Download the dataset when it is not found locally."
    )(f)
    f = click.option(
        "--data-dir",
        type=click.Path(file_okay=False),
        default=None,
        help="Folder that holds datasets (before $NAS_PROXY_DATA and system locations).",
    )(f)
    return f


def common_options(*, trains: bool = True, data: bool = True) -> Callable[[Callable], Callable]:
    """The flags every command shares; ``trains`` adds --device, ``data`` adds --data-dir."""

    def decorate(f: Callable) -> Callable:
        if data:
            f = data_options(f)
        if trains:
            f = device_option(f)
        f = seed_option(f)
        f = json_option(f)
        return config_option(f)

    return decorate


def emit(result: dict[str, Any], as_json: bool, human: str | None = None) -> None:
    """Print the result: JSON on stdout with ``--json``, else the human summary."""
    if as_json:
        if human:
            click.echo(human, err=True)
        click.echo(json.dumps(result, default=_jsonable, sort_keys=False))
    else:
        click.echo(human if human is not None else json.dumps(result, indent=2, default=_jsonable))


def info(message: str) -> None:
    """Human progress text: always stderr, so --json stdout stays one object."""
    click.echo(message, err=True)


def _jsonable(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)
