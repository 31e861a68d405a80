"""`mipart bench run`: each chosen service's listener driven by the pinned tool, one tagged results file.

The profile says which services there are, where they listen and what model they serve;
the GPU backend says how the host is partitioned. Nothing on the host is changed.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from mipart import __version__
from mipart.bench import tags
from mipart.bench.drive import Target, check_reachable, run_tool
from mipart.bench.results import Results, ServiceRun, Tags, write_results
from mipart.bench.sweep import Sweep
from mipart.bench.tokenizer import word_tokenizer
from mipart.bench.tool import cache_root, ensure_tool, tool_name
from mipart.errors import UserError
from mipart.profile.schema import Profile, ServiceSpec

MAX_LABEL = 80


@dataclass(frozen=True)
class RunRequest:
    profile: Profile
    service: str | None  # None: every service
    sweep: Sweep
    output: Path
    label: str | None
    tokenizer: str | None
    progress: bool


def chosen_services(profile: Profile, name: str | None) -> list[ServiceSpec]:
    services = [s for s in profile.services if name is None or s.name == name]
    if name is not None and not services:
        known = ", ".join(s.name for s in profile.services) or "none"
        raise UserError(f"--service {name}: the profile has no such service (it has: {known})")
    unix = [s.name for s in services if s.listen.path is not None]
    if unix:
        raise UserError(
            f"service {', '.join(unix)} listens on a unix socket, which the load tool cannot reach; "
            "choose another with --service"
        )
    if not services:
        raise UserError("the profile has no services to drive")
    return services


def tokenizer_for(service: ServiceSpec, given: str | None) -> str:
    """--tokenizer; else the word tokenizer for a fake engine; else the model (a local dir, or an id in the model
    cache)."""
    if given:
        if not Path(given).is_dir():
            raise UserError(
                f"--tokenizer {given}: not a directory; give a local directory holding the model's tokenizer.json"
            )
        return given
    if tags.is_fake(service):
        return str(word_tokenizer(cache_root() / "word-tokenizer"))
    return service.model


def target_of(service: ServiceSpec, request: RunRequest) -> Target:
    host, port = tags.client_address(service.listen)
    url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    return Target(url, service.model_name, tokenizer_for(service, request.tokenizer), request.profile.instances.hf_home)


def check_output(path: Path) -> None:
    """-o must be writable before minutes of load are spent."""
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"-o {path}: the directory {parent} does not exist; create it or give another path")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UserError(f"-o {path}: not writable by this user; give a path you can write")
    if path.is_dir():
        raise UserError(f"-o {path}: is a directory; give a file name, e.g. {path / 'results.json'}")


def check_label(label: str | None) -> None:
    if label is not None and not (0 < len(label) <= MAX_LABEL and label.isprintable()):
        raise UserError(
            f"--label {label!r}: give up to {MAX_LABEL} printable characters (it names a series in a table and a "
            "legend)"
        )


def run_bench(request: RunRequest, say) -> Results:
    check_output(request.output)
    check_label(request.label)
    services = chosen_services(request.profile, request.service)
    targets = [target_of(s, request) for s in services]  # a wrong option fails before anything is installed
    for target in targets:
        check_reachable(target)
    python = ensure_tool(say)
    layout = tags.read_layout()
    engine = tags.engines_of(services)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    runs = []
    for service, target in zip(services, targets, strict=True):
        say(f"mipart: {service.name}: {request.sweep.describe()} at {target.url}, model {service.model_name}")
        steps = run_tool(
            python, target, request.sweep, request.progress, request.output.with_name(request.output.name + ".tool.log")
        )
        runs.append(ServiceRun(service.name, str(service.listen), service.model_name, steps))
    label = request.label or f"{layout.split(' (')[0]}, {len(services)} service{'s' * (len(services) > 1)}"
    result_tags = Tags(
        label=label,
        profile_digest=request.profile.digest,
        layout=layout,
        engine=engine,
        engine_fake=any(tags.is_fake(s) for s in services),
        mipart_version=__version__,
        tool=tool_name(),
        host=tags.host_of(),
        started=started,
        sweep=request.sweep.to_json(),
    )
    results = Results(result_tags, tuple(runs))
    write_results(request.output, results)
    return results
