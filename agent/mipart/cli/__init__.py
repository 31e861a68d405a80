"""Command-line entry point.

Subcommands live in their own modules and are imported only when invoked, so
`mipart validate` does not pay for aiohttp, structlog or D-Bus at start-up.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

import click

from mipart.errors import UserError
from mipart.names import DEFAULT_PROFILE

# name -> "module:attribute"; a command is imported only when it runs (or for --help).
COMMANDS = {
    "validate": "mipart.cli.profile:validate",
    "partition": "mipart.cli.partition:partition",
    "sim": "mipart.cli.sim:sim",
    "plan": "mipart.cli.serving:plan",
    "render": "mipart.cli.serving:render",
    "exec": "mipart.cli.exec:exec_instance",
    "exec-nginx": "mipart.cli.exec:exec_nginx",
    "agent": "mipart.cli.agent:agent",
    "status": "mipart.cli.status:status",
    "drain": "mipart.cli.drain:drain",
    "undrain": "mipart.cli.drain:undrain",
    "bench": "mipart.cli.bench:bench",
}


class LazyGroup(click.Group):
    def __init__(self, *args, lazy: dict[str, str], **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | self._available())

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy and name not in self.commands:
            module_name, attr = self.lazy[name].split(":")
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as exc:
                if exc.name != module_name:
                    raise
                return None
            self.add_command(getattr(module, attr), name)
        return super().get_command(ctx, name)

    def _available(self) -> set[str]:
        found = set()
        for name, target in self.lazy.items():
            if importlib.util.find_spec(target.split(":")[0]) is not None:
                found.add(name)
        return found


class Choice(click.Choice):
    """A choice whose old spellings (`aliases`: old -> new) are still taken, for one release, and not shown."""

    def __init__(self, choices, aliases: dict[str, str] | None = None, **kwargs):
        super().__init__(choices, **kwargs)
        self.aliases = aliases or {}

    def convert(self, value, param, ctx):
        return super().convert(self.aliases.get(value, value), param, ctx)


profile_option = click.option(
    "--profile",
    "profile_path",
    default=DEFAULT_PROFILE,
    show_default=True,
    type=click.Path(dir_okay=True, path_type=str),
    help="Profile to read.",
)


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mipart", prog_name="mipart")
def cli() -> None:
    """Declarative GPU partitioning and vLLM serving for AMD Instinct hosts."""


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; user mistakes become one line on stderr and a non-zero exit."""
    try:
        result = cli.main(args=argv, prog_name="mipart", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("mipart: aborted", err=True)
        sys.exit(130)
    except UserError as exc:
        click.echo(f"mipart: {exc}" if exc.prefix else str(exc), err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(1)
    sys.exit(result if isinstance(result, int) else 0)
