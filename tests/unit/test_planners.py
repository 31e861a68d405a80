"""The pure planners, called directly with values built by hand: no CLI, no host, no files.

Profiles come from YAML text through the real loader; GPUs, unit states and digests are
the shared value types (mipart.values). Each planner has one block below:
plan_instances, render_nginx and render_front, plan_actions, plan_partitions.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from gpus import PARTS, bdf, logical_gpus

from mipart.gpu.partitioning import COMPUTE_ATTR, MEMORY_ATTR
from mipart.nginx.conf import nginx_workers, render_nginx
from mipart.nginx.front import FRONT_SIZED_FOR, render_front
from mipart.partition.plan import HostRules, PlanError, plan_partitions
from mipart.profile.load import check_profile, load_profile
from mipart.serving.instances import InstancePlanError, plan_instances
from mipart.serving.reconcile import plan_actions
from mipart.values import HostState, LoadMode, PhysicalGpu, UnitState

PAIRS = {"SPX": ("NPS1",), "DPX": ("NPS1", "NPS2"), "QPX": ("NPS1", "NPS4"), "CPX": ("NPS1", "NPS2", "NPS4")}


def profile(body: str, gpus: str = "gpus: {compute: DPX, memory: NPS2}"):
    return check_profile(f"version: 1\n{gpus}\n{body}")


CHAT = 'services:\n  chat: {model: org/m, listen: "127.0.0.1:8040"}\n'


# -- plan_instances: profile + logical GPUs -> one spec per server ------------------------------


DPX_NUMBERS = [8 * gpu + partition for gpu in range(8) for partition in range(2)]


def test_one_instance_per_logical_gpu_numbered_by_its_slot_with_its_socket_and_devices():
    specs = {s.number: s for s in plan_instances(profile(CHAT), logical_gpus("DPX"))}
    assert list(specs) == DPX_NUMBERS  # N = 8 x physical GPU + partition
    ninth = specs[9]
    socket = "/run/mipart-vllm/sockets/9/http.sock"
    assert (ninth.socket, ninth.address, ninth.unit) == (socket, f"unix:{socket}", "mipart-vllm@9.service")
    assert ninth.logical_gpus == (9,) and ninth.physical_gpus == (1,)  # GPU 1, partition 1
    assert ninth.devices == ("/dev/kfd", "/dev/dri/renderD137")
    # ROCm's index is the launcher's to resolve at start (serving/visible.py), not the planner's.
    assert "CUDA_VISIBLE_DEVICES" not in dict(ninth.env) and ninth.visible_devices_env == "CUDA_VISIBLE_DEVICES"
    assert ninth.argv[:7] == ("vllm", "serve", "org/m", "--uds", socket, "--served-model-name", "org/m")


def test_tensor_parallel_groups_take_consecutive_logical_gpus_and_are_named_by_the_first():
    specs = plan_instances(
        profile(
            'services:\n  big: {model: org/m, listen: 8040, partitions: "32-33,40-41,48-49,56-57", tensor_parallel: 4}\n'
        ),
        logical_gpus("DPX"),
    )
    assert [(s.number, s.logical_gpus, s.physical_gpus, s.socket) for s in specs] == [
        (32, (32, 33, 40, 41), (4, 5), "/run/mipart-vllm/sockets/32/http.sock"),
        (48, (48, 49, 56, 57), (6, 7), "/run/mipart-vllm/sockets/48/http.sock"),
    ]
    assert specs[0].render_nodes == (
        "/dev/dri/renderD160",
        "/dev/dri/renderD161",
        "/dev/dri/renderD168",
        "/dev/dri/renderD169",
    )
    assert dict(specs[0].env)["NCCL_MIN_NCHANNELS"] == "112"
    assert specs[0].argv[-2:] == ("--tensor-parallel-size", "4")


def test_two_services_share_the_host_by_partitions_and_sockets_follow_the_gpu():
    text = 'services:\n  chat: {model: org/a, listen: 8040, partitions: "0-1,8-9"}\n  code: {model: org/b, listen: 8041, partitions: [48, 49]}\ninstances: {base_port: 9000}\n'
    specs = plan_instances(profile(text), logical_gpus("DPX"), Path("/run/x/sockets"))  # base_port: unused
    assert [(s.number, s.service, s.socket) for s in specs] == [
        (n, service, f"/run/x/sockets/{n}/http.sock")
        for n, service in ((0, "chat"), (1, "chat"), (8, "chat"), (9, "chat"), (48, "code"), (49, "code"))
    ]


def test_a_socket_path_longer_than_a_unix_socket_takes_is_one_clear_error():
    deep = Path("/run/" + "x" * 90 + "/sockets")
    with pytest.raises(InstancePlanError, match=r"socket .* is longer than 107 bytes, .* use a shorter serving dir"):
        plan_instances(profile(CHAT), logical_gpus("DPX"), deep)


def test_a_container_sees_only_its_own_gpus_numbered_from_zero():
    text = 'services:\n  chat: {model: org/m, listen: 8040, runtime: docker, image: "rocm/vllm:latest", partitions: [17]}\n'
    [spec] = plan_instances(profile(text), logical_gpus("DPX"))
    devices = [spec.argv[i + 1] for i, arg in enumerate(spec.argv) if arg == "--device"]
    assert devices == ["/dev/kfd", "/dev/dri/renderD145"]
    assert dict(spec.env)["CUDA_VISIBLE_DEVICES"] == "0" and spec.user is None


@pytest.mark.parametrize(
    "body, logical, layout, message",
    [
        (
            '  chat: {model: org/m, listen: 8040, partitions: "0-15"}\n',
            logical_gpus("SPX"),
            dict.fromkeys(range(8), "SPX"),
            "names logical GPU 1-7,9-15, which this host does not have in SPX: its logical GPUs are 0,8,16,24,32,40,48,"
            "56; N = 8 x GPU + partition (mipart-vllm@N is partition N % 8 of GPU N // 8)",
        ),
        (
            "  chat: {model: org/m, listen: 8040, partitions: [2]}\n",
            logical_gpus("DPX", physical=2) + logical_gpus("QPX")[8:],
            {0: "DPX", 1: "DPX", **dict.fromkeys(range(2, 8), "QPX")},
            "names logical GPU 2, which this host does not have in DPX (GPUs 0-1), QPX (GPUs 2-7): its logical GPUs "
            "are 0-1,8-9,16-19,24-27,32-35,40-43,48-51,56-59;",
        ),
        (
            "  chat: {model: org/m, listen: 8040, tensor_parallel: 3}\n",
            logical_gpus("DPX"),
            None,
            "tensor_parallel 3 does not divide its 16 logical GPUs",
        ),
        ("  chat: {model: org/m, listen: 8040}\n", (), None, "has no logical GPU on this host"),
    ],
    ids=["missing-gpu", "missing-on-a-mixed-host", "tp-does-not-divide", "no-gpus"],
)
def test_a_profile_that_does_not_fit_the_host_is_one_clear_error(body, logical, layout, message):
    with pytest.raises(InstancePlanError, match=re.escape(message)):
        plan_instances(profile("services:\n" + body), logical, layout=layout)


# -- render_nginx: upstreams, readiness, the 503 answer, sizing -----------------------------------


def nginx_conf(text: str, ready, compute: str = "DPX") -> str:
    prof = profile(text)
    return render_nginx(prof, plan_instances(prof, logical_gpus(compute)), frozenset(ready), Path("/run/test/nginx"))


def test_only_ready_instances_get_traffic_and_the_rest_are_listed_down():
    conf = nginx_conf(CHAT, ready={0, 8})
    assert "# service chat: 2/16 instances ready" in conf
    # a ready instance leaves every worker's choice for a health interval after one failure (issue 13)
    assert "server unix:/run/mipart-vllm/sockets/0/http.sock max_fails=1 fail_timeout=2s;  # mipart-vllm@0" in conf
    assert "server unix:/run/mipart-vllm/sockets/8/http.sock max_fails=1 fail_timeout=2s;  # mipart-vllm@8" in conf
    assert "server unix:/run/mipart-vllm/sockets/1/http.sock down;  # mipart-vllm@1" in conf
    assert conf.count(" down;") == 14
    assert "proxy_pass http://mipart_chat;" in conf and "least_conn;" in conf
    assert "proxy_buffering off;" in conf  # streams pass as they come
    assert "pid /run/test/nginx/nginx.pid;" in conf


def test_with_no_ready_instance_the_service_answers_503_json_and_proxies_nothing():
    conf = nginx_conf(CHAT, ready=())
    location = conf[conf.index("        location / {") :]
    assert "proxy_pass" not in location
    body = re.search(r"return 503 '([^']*)';", location).group(1)
    error = json.loads(body)["error"]
    assert (error["type"], error["code"]) == ("ServiceUnavailable", 503)
    assert "service chat" in error["message"] and "org/m" in error["message"]
    # nginx errors on the way to an instance (502, 504) get the same JSON answer
    assert "error_page 502 504 = @unavailable;" in conf and conf.count(f"return 503 '{body}';") == 2


def test_a_service_with_no_instance_planned_still_has_a_valid_upstream():
    prof = profile(CHAT)
    conf = render_nginx(prof, (), frozenset(), Path("/run/test/nginx"))
    assert "server 127.0.0.1:9 down;  # no instances planned" in conf and "# service chat: 0/0 instances ready" in conf


def test_the_header_names_the_profile_it_came_from_in_one_comment_line(tmp_path):
    path = tmp_path / "lab\nworker_processes 64;.yaml"  # a file name is any bytes but / and NUL
    path.write_text("version: 1\n" + CHAT)
    conf = render_nginx(load_profile(str(path)), (), frozenset(), Path("/run/test/nginx"))
    header = conf.splitlines()[0]
    assert header == f"# Generated by mipart from {json.dumps(str(path))}; edits here are overwritten."
    assert "\nworker_processes 64;" not in conf


@pytest.mark.parametrize(
    "service, compute, connections",
    [
        ("{model: org/m, listen: 8040}", "DPX", 16 * 256 * 2 + 512),  # vLLM's default 256 sequences each
        ('{model: org/m, listen: 8040, args: ["--max-num-seqs", "512"]}', "DPX", 16 * 512 * 2 + 512),
        ('{model: org/m, listen: 8040, partitions: [0], args: ["--max-num-seqs", "4"]}', "DPX", 1024),  # the floor
        ('{model: org/m, listen: 8040, args: ["--max-num-seqs", "1024"]}', "CPX", 65535),  # the ceiling
    ],
    ids=["default", "max-num-seqs", "floor", "ceiling"],
)
def test_worker_connections_fit_every_instance_full_at_once(service, compute, connections):
    conf = nginx_conf(f"services:\n  chat: {service}\n", ready=(), compute=compute)
    assert f"worker_connections {connections};" in conf
    assert f"worker_rlimit_nofile {connections * 2};" in conf


def test_workers_are_this_hosts_cpus_at_most_four_in_both_layers():
    """Each worker preallocates worker_connections (15 MB at 33280): `auto` on a 384-thread host holds ~11 GB."""
    assert [nginx_workers(cpus) for cpus in (384, 64, 4, 2, 1)] == [4, 4, 4, 2, 1]
    prof = profile(TWO)
    specs = plan_instances(prof, logical_gpus("DPX"))
    workers = f"\nworker_processes {nginx_workers(len(os.sched_getaffinity(0)))};\n"
    assert workers in render_nginx(prof, specs, frozenset(), Path("/b"))
    assert workers in render_front(prof, specs, Path("/b"), Path("/f"))


# -- render_front: the clients' layer, and the back reached over its sockets -------------------------


TWO = (  # GPUs 0-3 and 4-7 in DPX
    'services:\n  chat: {model: org/m, listen: "127.0.0.1:8040", partitions: "0-1,8-9,16-17,24-25"}\n'
    '  code: {model: org/c, listen: 8041, partitions: "32-33,40-41,48-49,56-57"}\n'
)


def test_the_back_listens_on_a_socket_per_service_and_the_front_on_the_profiles_listeners():
    prof = profile(TWO)
    specs = plan_instances(prof, logical_gpus("DPX"))
    back = render_nginx(prof, specs, frozenset(DPX_NUMBERS), Path("/run/test/nginx"))
    front = render_front(prof, specs, Path("/run/test/nginx"), Path("/run/test/nginx-front"))
    assert "listen unix:/run/test/nginx/svc-chat.sock;" in back and "listen unix:/run/test/nginx/svc-code.sock;" in back
    assert "listen 127.0.0.1:8040;" not in back and "keepalive_timeout 75s;" in back
    assert "listen 127.0.0.1:8040;" in front and "listen 0.0.0.0:8041;" in front
    assert "upstream mipart_back_chat { server unix:/run/test/nginx/svc-chat.sock; keepalive 256; }" in front
    assert "keepalive_timeout 75s;" in front and "pid /run/test/nginx-front/nginx.pid;" in front
    # the front keeps its connections to the back and sends again, POST included, a request that met one
    # the back's reload closed (only on error: not on a timeout); streamed back, its body read first
    assert "proxy_next_upstream error non_idempotent;" in front
    assert "proxy_buffering off;" in front and "proxy_request_buffering on;" in front
    # serving clients itself (the handover from one layer), the back keeps no connection a reload could cut
    direct = render_nginx(prof, specs, frozenset(DPX_NUMBERS), Path("/run/test/nginx"), direct=True)
    assert "listen 127.0.0.1:8040;" in direct and "keepalive_timeout 0;" in direct
    # the back down: the same JSON 503 as the back's own for no ready instance
    assert "error_page 502 504 = @unavailable;" in front
    answers = re.compile(r"return 503 '([^']*)';")
    assert answers.findall(front) == answers.findall(back) and len(answers.findall(front)) == 2
    # sized as the back is, for at least FRONT_SIZED_FOR instances a service (here 2 x 64 x 256 x 2 + 512,
    # over nginx's cap), where the back counts its 16
    connections = re.compile(r"worker_connections (\d+);")
    assert int(connections.findall(front)[0]) == min(65535, 2 * FRONT_SIZED_FOR * 256 * 2 + 512)
    assert int(connections.findall(back)[0]) == 16 * 256 * 2 + 512


def test_membership_and_layout_leave_the_front_alone_and_a_listener_changes_it():
    prof = profile(TWO)
    specs = plan_instances(prof, logical_gpus("DPX"))
    fronts = {render_front(prof, specs, Path("/b"), Path("/f"))} | {
        render_front(prof, specs[:3], Path("/b"), Path("/f"))
    }
    assert len({render_nginx(prof, specs, frozenset(ready), Path("/b")) for ready in ((), (0,), (0, 1))}) == 3
    assert len(fronts) == 1  # neither which are ready nor how many are planned (a rolling change) reaches it
    moved = profile(TWO.replace("8041", "8042"))
    assert render_front(moved, specs, Path("/b"), Path("/f")) not in fronts


def test_direct_the_back_serves_the_listeners_too_during_a_handover():
    prof = profile(CHAT)
    specs = plan_instances(prof, logical_gpus("DPX"))
    conf = render_nginx(prof, specs, frozenset(DPX_NUMBERS), Path("/run/test/nginx"), direct=True)
    assert "        listen unix:/run/test/nginx/svc-chat.sock;\n        listen 127.0.0.1:8040;\n" in conf


# -- plan_actions: start, stop, restart from specs, unit states and running digests ---------------


def three_specs() -> dict:
    prof = profile('services:\n  chat: {model: org/m, listen: 8040, partitions: "0-2"}\n')
    return {s.number: s for s in plan_instances(prof, logical_gpus("CPX"))}


def running(*numbers: int, state: str = "active") -> dict[int, UnitState]:
    return {n: UnitState(state, "running" if state == "active" else "dead", 1000 + n) for n in numbers}


def test_nothing_running_starts_every_instance_in_order():
    actions = plan_actions(three_specs(), {}, {})
    assert (actions.start, actions.stop, actions.restart) == ((0, 1, 2), (), ())


def test_instances_on_their_current_spec_are_left_alone():
    specs = three_specs()
    actions = plan_actions(specs, running(0, 1, 2), {n: s.digest() for n, s in specs.items()})
    assert (actions.start, actions.stop, actions.restart) == ((), (), ())


def test_a_changed_spec_restarts_and_so_does_a_server_without_a_launch_record():
    """Issue 20: a digest the server kept in its own environment it could erase, and None kept it
    serving for good. Now None is a server mipart cannot vouch for (an older mipart's, on a port)."""
    specs = three_specs()
    digests = {0: specs[0].digest(), 1: "0123456789abcdef", 2: None}
    actions = plan_actions(specs, running(0, 1, 2), digests)
    assert (actions.start, actions.stop, actions.restart) == ((), (), (1, 2))


def test_units_without_a_spec_are_stopped_and_dead_ones_with_a_spec_started():
    specs = three_specs()
    states = {
        **running(0, 5, 7),
        **running(1, state="failed"),
        **running(2, state="inactive"),
        **running(9, state="inactive"),
    }
    states[3] = UnitState("activating", "start", 1003)  # starting counts as running: not started twice
    actions = plan_actions(specs, states, {0: specs[0].digest()})
    assert (actions.start, actions.stop, actions.restart) == ((1, 2), (3, 5, 7), ())


# -- plan_partitions: the fewest writes, memory first, one reload -----------------------------------


def host_state(compute: str, memory: str, gpus: int = 8) -> HostState:
    physical = tuple(
        PhysicalGpu(
            index=g,
            bdf=bdf(g),
            device_id=0x74A1,
            compute=compute,
            compute_available=tuple(PARTS),
            memory=memory,
            memory_available=("NPS1", "NPS2", "NPS4"),
            path=Path(f"/sys/bus/pci/devices/{bdf(g)}"),
            hive_id=0x5EED,  # one XGMI hive of 8, as KFD's hive_id shows it
        )
        for g in range(gpus)
    )
    return HostState(physical=physical, logical=())


def rules(load_mode: str | None = None, gpus: int = 8) -> HostRules:
    """`load_mode`: amdgpu.user_partt_mode as the next load reads it (None: no reload asked)."""
    return HostRules(
        pairs={g: dict(PAIRS) for g in range(gpus)},
        partitions={g: dict(PARTS) for g in range(gpus)},
        load_mode=None
        if load_mode is None
        else LoadMode(load_mode, "" if load_mode == "AUTO" else "/etc/modprobe.d/x.conf:3"),
    )


def gpus(text: str):
    return profile("", gpus=text).gpus


def test_a_host_already_in_the_profiles_modes_needs_no_write_and_no_reload():
    plan = plan_partitions(gpus("gpus: {compute: DPX, memory: NPS2}"), host_state("DPX", "NPS2"), rules("DPX"))
    assert plan.noop and plan.writes == () and plan.reload is False
    assert all(g.matches for g in plan.gpus)
    assert len(plan.logical) == 16


def test_memory_is_written_once_for_the_hive_before_the_one_reload_then_compute_where_the_reload_left_it_wrong():
    plan = plan_partitions(
        gpus("gpus: {compute: DPX, memory: NPS2}"), host_state("SPX", "NPS1"), rules(load_mode="CPX")
    )
    assert plan.reload is True
    first, *rest = plan.writes
    assert (first.gpu, first.attribute, first.value, first.after_reload) == (0, MEMORY_ATTR, "NPS2", False)
    assert [(w.gpu, w.attribute, w.value, w.after_reload) for w in rest] == [
        (g, COMPUTE_ATTR, "DPX", True) for g in range(8)
    ]  # the reload sets CPX (user_partt_mode=4), so each GPU is written after it
    assert [w.attribute for w in plan.writes].count(MEMORY_ATTR) == 1
    assert [(lg.index, lg.physical, lg.partition, lg.render_minor) for lg in plan.logical[:3]] == [
        (0, 0, 0, 128),
        (1, 0, 1, 129),
        (8, 1, 0, 136),  # slots: 8 x GPU + partition, and renderD(128 + N)
    ]


def test_no_compute_write_where_the_reload_already_gives_the_wanted_mode():
    plan = plan_partitions(
        gpus("gpus: {compute: DPX, memory: NPS2}"), host_state("SPX", "NPS1"), rules(load_mode="AUTO")
    )
    assert plan.reload is True and [w.attribute for w in plan.writes] == [MEMORY_ATTR]


def test_compute_only_changes_need_no_reload_and_touch_only_the_gpus_the_profile_manages():
    spec = gpus("gpus: {compute: DPX, memory: NPS1, select: [0, 1, 2, 3], overrides: [{select: [3], compute: QPX}]}")
    plan = plan_partitions(spec, host_state("SPX", "NPS1"), rules())
    assert plan.reload is False
    assert [(w.gpu, w.value, w.after_reload) for w in plan.writes] == [
        (0, "DPX", False),
        (1, "DPX", False),
        (2, "DPX", False),
        (3, "QPX", False),
    ]
    assert [g.compute_want for g in plan.gpus] == ["DPX", "DPX", "DPX", "QPX", None, None, None, None]
    assert len(plan.logical) == 3 * 2 + 4 + 4 * 1


def test_a_pair_this_hosts_driver_refuses_is_refused_before_any_write():
    """The profile validator knows MI300's rules; the planner checks the host's own table (read from its driver)."""
    narrow = rules("AUTO")
    narrow.pairs[5]["DPX"] = ("NPS1",)
    with pytest.raises(
        PlanError,
        match=re.escape(f"GPU 5 ({bdf(5)}): compute DPX cannot run under memory NPS2; set gpus.memory to NPS1"),
    ):
        plan_partitions(gpus("gpus: {compute: DPX, memory: NPS2}"), host_state("SPX", "NPS1"), narrow)


def test_a_gpu_that_is_not_there_is_refused():
    with pytest.raises(PlanError, match=re.escape("name GPU 8, but this host has GPUs 0-7")):
        plan_partitions(gpus("gpus: {compute: DPX, select: [8]}"), host_state("SPX", "NPS1"), rules())


@pytest.mark.parametrize(
    "load, words",
    [
        ("SPX", "amdgpu.user_partt_mode=SPX, set in /etc/modprobe.d/x.conf:3, SPX does not run under NPS2 on GPU 0"),
        ("7", "amdgpu.user_partt_mode=7, set in /etc/modprobe.d/x.conf:3, is no mode the driver knows"),
    ],
)
def test_a_reload_that_would_leave_the_gpus_out_is_refused_before_any_write(load, words):
    """gfx_v9_4_3_cp_resume fails GPU init on a user_partt_mode the new memory mode refuses (finding 2)."""
    with pytest.raises(PlanError) as caught:
        plan_partitions(gpus("gpus: {compute: DPX, memory: NPS2}"), host_state("SPX", "NPS1"), rules(load))
    line = str(caught.value)
    assert line.startswith("a driver reload into NPS2 would leave the GPUs out: " + words), line
    assert line.endswith(
        "so GPU init fails (gfx_v9_4_3_cp_resume) and the GPUs do not come back; set it to one that runs under NPS2 "
        "(DPX, CPX) or to -2 (AUTO), or remove it; nothing was written or reloaded"
    )
