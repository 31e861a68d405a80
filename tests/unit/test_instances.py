"""Instance planning, `mipart plan`/`render`, and the launcher, through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import mipart
from rendered import render_run_dir

from mipart.serving.spec import InstanceSpec


def write(tmp_path, text: str):
    path = tmp_path / "profile.yaml"
    path.write_text("version: 1\ngpus: {compute: DPX, memory: NPS2}\n" + text)
    return path


def plan_json(tmp_path, sim_env, text: str) -> dict:
    done = mipart("plan", "--json", "--profile", write(tmp_path, text), env=sim_env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


DPX_NUMBERS = [8 * gpu + partition for gpu in range(8) for partition in range(2)]  # 0-1,8-9,...,56-57


def test_one_instance_per_logical_gpu_with_its_own_devices_and_socket(tmp_path, sim_env):
    plan = plan_json(tmp_path, sim_env, "services:\n  chat: {model: org/m, listen: 8040}\n")
    instances = {i["number"]: i for i in plan["instances"]}
    assert list(instances) == DPX_NUMBERS  # N = 8 x GPU + partition, with gaps
    ninth = instances[9]
    socket = f"{sim_env['MIPART_SERVING_DIR']}/sockets/9/http.sock"
    assert ninth["socket"] == socket and "port" not in ninth
    assert ninth["render_nodes"] == ["/dev/dri/renderD137"]  # GPU 1, partition 1
    env = dict(ninth["env"])
    # ROCm's index is resolved when the server starts, where it runs (serving/visible.py)
    assert "CUDA_VISIBLE_DEVICES" not in env and ninth["visible_devices_env"] == "CUDA_VISIBLE_DEVICES"
    assert env["VLLM_ROCM_USE_AITER"] == "1" and "NCCL_MIN_NCHANNELS" not in env
    assert ninth["argv"][:3] == ["vllm", "serve", "org/m"]
    assert ninth["argv"][3:7] == ["--uds", socket, "--served-model-name", "org/m"]
    assert plan["upstreams"] == [
        {
            "service": "chat",
            "listen": "0.0.0.0:8040",
            "model": "org/m",
            "routing": "least_conn",
            "servers": [f"unix:{sim_env['MIPART_SERVING_DIR']}/sockets/{n}/http.sock" for n in DPX_NUMBERS],
        }
    ]


def test_tensor_parallel_groups_and_multi_gpu_defaults(tmp_path, sim_env):
    plan = plan_json(
        tmp_path,
        sim_env,
        'services:\n  big: {model: org/m, listen: 8040, partitions: "8-9,16-17,24-25,32-33", tensor_parallel: 4, '
        'env: {NCCL_MIN_NCHANNELS: "64"}}\n',
    )
    assert [(i["number"], i["logical_gpus"]) for i in plan["instances"]] == [
        (8, [8, 9, 16, 17]),
        (24, [24, 25, 32, 33]),
    ]
    first = plan["instances"][0]
    assert dict(first["env"])["NCCL_MIN_NCHANNELS"] == "64"  # the user's value wins over the default
    assert first["argv"][-2:] == ["--tensor-parallel-size", "4"]
    assert first["physical_gpus"] == [1, 2]


def test_containers_get_only_their_own_gpus(tmp_path, sim_env):
    plan = plan_json(
        tmp_path,
        sim_env,
        'services:\n  chat: {model: org/m, listen: 8040, runtime: docker, image: "rocm/vllm:latest", partitions: [17], env: {SECRET_TOKEN: "s3cr3t"}}\n',
    )
    argv = plan["instances"][0]["argv"]
    assert "--privileged" not in argv and "/dev/dri" not in argv
    devices = [argv[i + 1] for i, a in enumerate(argv) if a == "--device"]
    assert devices == ["/dev/kfd", "/dev/dri/renderD145"]  # logical 17 = GPU 2, partition 1
    sockets = f"{sim_env['MIPART_SERVING_DIR']}/sockets/17"
    assert "-p" not in argv and argv[argv.index("-v") + 1] == f"{sockets}:{sockets}"  # its socket, at the same path
    assert argv[argv.index("rocm/vllm:latest") + 1 :][:4] == ["sh", "-c", 'umask 0007 && exec "$@"', "mipart-vllm"]
    assert argv[-4:-2] == ["--uds", f"{sockets}/http.sock"]  # the cache's -v is the launcher's (resolved)
    assert "s3cr3t" not in " ".join(argv) and "SECRET_TOKEN" not in argv  # env never in argv
    assert "-e" not in argv and "--env" not in argv  # the launcher adds an --env-file (test_security_container_env)
    assert dict(plan["instances"][0]["env"])["CUDA_VISIBLE_DEVICES"] == "0"  # inside, its only GPU
    assert plan["instances"][0]["user"] is None and "visible_devices_env" not in plan["instances"][0]


def test_partitions_the_host_does_not_have_are_one_clear_line(tmp_path, sim_env):
    """A dense list from before the slot numbering (0-15 on a DPX host) does not silently change meaning."""
    done = mipart(
        "plan",
        "--profile",
        write(tmp_path, 'services:\n  chat: {model: org/m, listen: 8040, partitions: "0-15"}\n'),
        env=sim_env,
    )
    assert done.returncode == 1
    assert done.stderr == (
        "mipart: services.chat.partitions names logical GPU 2-7,10-15, which this host does not have in DPX: its "
        "logical GPUs are 0-1,8-9,16-17,24-25,32-33,40-41,48-49,56-57; N = 8 x GPU + partition (mipart-vllm@N is "
        "partition N % 8 of GPU N // 8)\n"
    )


def test_render_writes_only_generated_files_at_host_paths(tmp_path, sim_env):
    out = tmp_path / "image"
    done = mipart(
        "render",
        "--root",
        out,
        "--profile",
        write(tmp_path, 'services:\n  chat: {model: org/m, listen: 8040, partitions: "0-1"}\n'),
        env=sim_env,
    )
    assert done.returncode == 0, done.stderr
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == [
        "run/mipart/instances/0.json",
        "run/mipart/instances/1.json",
        "run/mipart/nginx-front/nginx.conf",
        "run/mipart/nginx/nginx.conf",
    ]
    conf = (out / "run/mipart/nginx/nginx.conf").read_text()
    assert "pid /run/mipart/nginx/nginx.pid;" in conf
    assert "server unix:/run/mipart-vllm/sockets/1/http.sock max_fails=1 fail_timeout=2s;" in conf  # host paths
    assert "listen unix:/run/mipart/nginx/svc-chat.sock;" in conf and "listen 8040;" not in conf
    front = (out / "run/mipart/nginx-front/nginx.conf").read_text()
    assert "listen 0.0.0.0:8040;" in front and "server unix:/run/mipart/nginx/svc-chat.sock;" in front
    assert not (tmp_path / "run").exists()  # nothing outside --root


def test_launcher_execs_the_server_with_its_spec(tmp_path, sim_env):
    run = render_run_dir(tmp_path, sim_env, 'partitions: [9], command: ["/bin/sh", "-c", "env", "sh"], env: {FOO: bar}')
    # A visible-devices variable in the unit's environment (/etc/default/mipart) must not reach the server.
    done = mipart(
        "exec",
        "9",
        env={**sim_env, "MIPART_RUN_DIR": str(run), "HIP_VISIBLE_DEVICES": "0,1", "ROCR_VISIBLE_DEVICES": "0"},
    )
    assert done.returncode == 0, done.stderr
    env = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    # Confined to its own render node (as its unit's DeviceAllow= confines it), ROCm sees one GPU: index 0.
    assert env["FOO"] == "bar" and env["CUDA_VISIBLE_DEVICES"] == "0" and env["MIPART_INSTANCE"] == "9"
    assert "HIP_VISIBLE_DEVICES" not in env and "ROCR_VISIBLE_DEVICES" not in env
    assert "mipart: instance 9: CUDA_VISIBLE_DEVICES=0 (/dev/dri/renderD137 among the 1 GPUs" in done.stderr
    spec = json.loads((run / "instances/9.json").read_text())
    assert "MIPART_SPEC_DIGEST" not in env and spec["argv"][:3] == ["/bin/sh", "-c", "env"]
    launch = json.loads((Path(sim_env["MIPART_SERVING_DIR"]) / "launched/9.json").read_text())  # what it trusts instead
    assert launch["digest"] == InstanceSpec.from_json({k: v for k, v in spec.items() if k != "version"}).digest()


def test_launcher_errors_are_one_line(tmp_path, sim_env):
    done = mipart("exec", "7", env=sim_env)
    assert done.returncode == 1
    assert done.stderr.strip().startswith(
        f"mipart: instance 7: no spec at {sim_env['MIPART_RUN_DIR']}/instances/7.json; mipart-agent writes it"
    )
    run = render_run_dir(tmp_path, sim_env, 'partitions: [0], command: ["no-such-engine"]')
    done = mipart("exec", "0", env={**sim_env, "MIPART_RUN_DIR": str(run)})
    assert done.returncode == 1
    assert (
        done.stderr.strip()
        == "mipart: instance 0: command 'no-such-engine' not found; install it, or set services.chat.command"
    )


def test_exec_nginx_errors_are_one_line(tmp_path):
    """mipart-nginx.service's ExecStart: a missing prefix or nginx binary says which, never a traceback."""
    done = mipart("exec-nginx", env={"MIPART_RUN_DIR": str(tmp_path / "none")})
    assert (done.returncode, done.stderr.strip()) == (
        1,
        f"mipart: nginx prefix {tmp_path}/none/nginx: No such file or directory; "
        "mipart-agent writes it and nginx.conf (is it running?)",
    )
    (tmp_path / "run/nginx").mkdir(parents=True)
    done = mipart("exec-nginx", env={"MIPART_RUN_DIR": str(tmp_path / "run"), "MIPART_NGINX": "/nonexistent/nginx"})
    assert (done.returncode, done.stderr.strip()) == (
        1,
        "mipart: cannot run nginx /nonexistent/nginx: No such file or directory; "
        "install nginx (apt-get install nginx-light or nginx)",
    )


def test_launcher_refuses_a_spec_of_an_unknown_version(tmp_path, sim_env):
    run = render_run_dir(tmp_path, sim_env, 'partitions: [0], command: ["/bin/true"]')
    path = run / "instances/0.json"
    spec = json.loads(path.read_text())
    assert spec["version"] == 2
    path.write_text(json.dumps({**spec, "version": 1}))  # an older agent's: instances on ports
    done = mipart("exec", "0", env={**sim_env, "MIPART_RUN_DIR": str(run)})
    assert done.returncode == 1
    assert (
        done.stderr
        == f"mipart: instance 0: spec {path} has version 1, but this mipart reads version 2; restart mipart-agent to rewrite it\n"
    )
