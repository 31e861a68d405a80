"""`mipart bench run` and `mipart bench compare`: the hand-run benchmark as a verb (docs/bench.md)."""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable
from pathlib import Path

import click

from mipart.cli import Choice, profile_option
from mipart.errors import UserError

PRESET_NAMES = ("small", "full")  # mipart.bench.sweep.PRESETS, spelled here so `--help` imports nothing
OLD_PRESETS = {"seed": "full"}  # the old name, still taken for one release


@click.group("bench")
def bench() -> None:
    """Measure the services' listeners with a pinned load tool, and compare runs."""


SWEEP_OPTIONS = (
    click.option(
        "--preset",
        type=Choice(PRESET_NAMES, aliases=OLD_PRESETS),
        default="small",
        show_default=True,
        help="small: 1,4,16 streams, 2 s warm-up, 10 s a step; full: a sweep of 10 rates up to 1024 users, "
        "30 s + 120 s a step (the hand-run benchmark mipart replaces).",
    ),
    click.option(
        "--concurrency",
        default=None,
        metavar="N,N,...",
        help="Streams per step, e.g. 1,8,64 (instead of the preset's levels).",
    ),
    click.option(
        "--rates",
        default=None,
        metavar="R,R,...",
        help="Requests per second per step, e.g. 0.5,2,8 (instead of streams).",
    ),
    click.option("--warmup", type=float, default=None, metavar="SECONDS", help="Warm-up per step, not counted."),
    click.option("--duration", type=float, default=None, metavar="SECONDS", help="Measured seconds per step."),
    click.option("--prompt-tokens", type=int, default=None, help="Prompt length of each request."),
    click.option("--output-tokens", type=int, default=None, help="Generated tokens asked of each request."),
    click.option("--service", default=None, help="Drive only this service (default: every service in the profile)."),
    click.option(
        "--tokenizer",
        default=None,
        metavar="DIR",
        help="A local dir with the model's tokenizer (default: the model from the model cache; a word tokenizer "
        "for fake engines).",
    ),
    click.option(
        "--progress/--no-progress",
        default=None,
        help="The load tool's live progress (default: when stderr is a terminal).",
    ),
)


def sweep_options(command: Callable[..., int]) -> Callable[..., int]:
    """The preset, load levels, request shape and load tool's options, the same words for `run` and
    `sweep`; the command gets the load as one Sweep (`load`)."""

    @functools.wraps(command)
    def with_load(preset, concurrency, rates, warmup, duration, prompt_tokens, output_tokens, **options) -> int:
        from mipart.bench.sweep import build_sweep

        load = build_sweep(preset, concurrency, rates, warmup, duration, prompt_tokens, output_tokens)
        return command(load=load, **options)

    for option in reversed(SWEEP_OPTIONS):
        with_load = option(with_load)
    return with_load


@bench.command("run")
@profile_option
@sweep_options
@click.option("--label", default=None, help="The series name in `bench compare` (default: the partition layout).")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Results file (default: mipart-bench-<UTC time>.json here).",
)
def run(profile_path: str, load, service, tokenizer, progress, label, output) -> int:
    """Drive each service's listener through a sweep of load levels; write a tagged results file."""
    from mipart.bench.run import RunRequest, run_bench
    from mipart.bench.table import markdown_table
    from mipart.profile import load_profile

    profile = load_profile(profile_path)
    output = output or Path(time.strftime("mipart-bench-%Y%m%d-%H%M%S.json", time.gmtime()))
    show = sys.stderr.isatty() if progress is None else progress
    request = RunRequest(profile, service, load, output, label, tokenizer, show)
    results = run_bench(request, _say)
    click.echo(markdown_table([results]))
    fake = " (fake engines: these figures measure the serving path, not a model)" if results.tags.engine_fake else ""
    click.echo(f"\nresults: {output}; layout {results.tags.layout}; engine {results.tags.engine}{fake}")
    return 0


@bench.command("sweep")
@profile_option
@click.option(
    "--layouts",
    default=None,
    metavar="C/M,C/M,...",
    help="Partition layouts to measure in turn, e.g. SPX/NPS1,DPX/NPS2.",
)
@click.option(
    "--latency-target",
    default="p50:5s",
    show_default=True,
    metavar="pQ:DURATION",
    help="The E2E latency quantile (p50 or p99) and bound under which the layout with the most throughput wins.",
)
@click.option(
    "--restore",
    "restore_only",
    is_flag=True,
    help="Only remove a stale profile override (a killed sweep) and serve the operator's profile.",
)
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where <layout>.json go (default: mipart-sweep-<UTC time> here).",
)
@sweep_options
@click.option(
    "--ready-timeout",
    type=click.FloatRange(1, 86400),
    default=1800.0,
    show_default=True,
    metavar="SECONDS",
    help="How long each repartition may take to reach full serving.",
)
def sweep(
    profile_path: str,
    load,
    service,
    tokenizer,
    progress,
    layouts,
    latency_target,
    restore_only,
    directory,
    ready_timeout,
) -> int:
    """Repartition through each layout in turn (as `systemctl reload mipart-agent` does), run the sweep, restore the
    profile's layout."""
    from mipart.bench import layout_sweep
    from mipart.bench.layouts import parse_layouts, parse_target, verdict
    from mipart.bench.table import markdown_table, tags_lines
    from mipart.profile import load_profile

    if restore_only:
        profile = load_profile(profile_path)
        done = layout_sweep.restore_only(_agent_link(profile), profile, ready_timeout, _say)
        click.echo(
            "the operator's profile is in force again" if done else "no profile override in place; nothing to restore"
        )
        return 0
    if not layouts:
        raise UserError("--layouts: give the layouts to compare, e.g. --layouts SPX/NPS1,DPX/NPS2 (or --restore)")
    chosen, target = parse_layouts(layouts), parse_target(latency_target)
    request = layout_sweep.SweepRequest(
        load_profile(profile_path),
        chosen,
        directory or Path(time.strftime("mipart-sweep-%Y%m%d-%H%M%S", time.gmtime())),
        service,
        load,
        tokenizer,
        sys.stderr.isatty() if progress is None else progress,
        ready_timeout,
    )
    runs = layout_sweep.run_sweep(request, _agent_link(request.profile), _say)
    paths = [str(request.directory / layout.file_name) for layout in chosen]
    click.echo(markdown_table(runs))
    click.echo("\n" + tags_lines(runs, paths))
    click.echo("\n" + verdict(target, runs))
    return 0


def _say(line: str) -> None:
    click.echo(line, err=True)


def _agent_link(profile):
    """The agent as `mipart status` reaches it (the profile's api.listen), and as the operator reloads it."""
    from mipart.api.client import AgentDown, Api, NotStatusApi
    from mipart.api.contract import Status
    from mipart.bench.layout_sweep import AgentLink
    from mipart.bench.reload import find_agent
    from mipart.paths import run_dir

    api = Api(profile.api.listen)

    def status() -> Status:
        try:
            return api.read(Status)
        except AgentDown as exc:
            raise UserError(
                f"no mipart agent answers on {api.label} ({exc}); start it (systemctl start mipart-agent); nothing "
                "was changed"
            ) from None
        except NotStatusApi as exc:
            raise NotStatusApi(f"{exc}; check api.listen in {profile.source}") from None

    status()
    return AgentLink(status, find_agent(run_dir()), run_dir())


@bench.command("compare")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Draw the figure into this PNG (needs python3-matplotlib).",
)
def compare(files: tuple[Path, ...], output: Path | None) -> int:
    """A Markdown table of results files, and with -o the seed's figure: throughput against latency, TTFT, ITL."""
    from mipart.bench.plot import NO_MATPLOTLIB, draw, have_matplotlib
    from mipart.bench.results import read_results
    from mipart.bench.table import markdown_table, tags_lines

    loaded = [read_results(path) for path in files]
    click.echo(markdown_table(loaded))
    click.echo("\n" + tags_lines(loaded, [str(p) for p in files]))
    if output is None:
        return 0
    if not have_matplotlib():
        click.echo(f"mipart: no figure written to {output}: {NO_MATPLOTLIB}", err=True)
        return 1
    draw(loaded, output)
    click.echo(f"\nfigure: {output}")
    return 0
