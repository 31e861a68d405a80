"""The generated nginx configs (the back and the front layer), checked by the real nginx (`nginx -t`) and by gixy-ng."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

from conftest import mipart


def test_nginx_config_is_valid_for_nginx_and_sized_from_concurrency(tmp_path, sim_env):
    out = tmp_path / "image"
    profile = tmp_path / "profile.yaml"
    profile.write_text(
        "version: 1\ngpus: {compute: DPX, memory: NPS2}\n"
        + 'services:\n  chat: {model: org/m, listen: "127.0.0.1:18040", partitions: "0-1,8-9,16-17,24-25", args: ["--max-num-seqs", "512"]}\n  code: {model: org/c, listen: 18041, partitions: "32-33,40-41,48-49,56-57"}\n'
    )
    assert mipart("render", "--root", out, "--ready", "none", "--profile", profile, env=sim_env).returncode == 0
    conf = out / "run/mipart/nginx/nginx.conf"
    body = conf.read_text()
    assert "worker_connections 12800;" in body  # (8 x 512 + 8 x 256) x 2 + 512
    assert body.count(" down;") == 16 and "return 503" in body
    # a kept connection to the instances for every request they admit at once, idle under uvicorn's 5 s
    assert "keepalive 4096;" in body and "keepalive 2048;" in body  # 8 x 512, 8 x 256
    assert body.count("keepalive_timeout 4s;") == 2
    fronts = out / "run/mipart/nginx-front/nginx.conf"
    front = fronts.read_text()
    # the front counts at least 64 instances a service: (64 x 512 + 64 x 256) x 2 + 512, over nginx's cap
    assert "worker_connections 65535;" in front and "keepalive_timeout 75s;" in front
    assert "listen 127.0.0.1:18040;" in front and "listen 0.0.0.0:18041;" in front and " down;" not in front
    back_prefix, front_prefix = tmp_path / "prefix", tmp_path / "front"
    for text, prefix in ((body, back_prefix), (front, front_prefix)):
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (prefix / name).mkdir(parents=True)
        text = text.replace("/run/mipart/nginx-front", str(front_prefix)).replace("/run/mipart/nginx", str(back_prefix))
        (prefix / "nginx.conf").write_text(text)
        check(prefix)


def check(prefix):
    """nginx -t, then gixy-ng's static analysis of the config: no finding of any severity."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    done = subprocess.run(
        [nginx, "-t", "-c", str(prefix / "nginx.conf"), "-p", str(prefix), "-g", "daemon off;"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    gixy = os.path.join(os.path.dirname(sys.executable), "gixy")
    report = subprocess.run([gixy, "-f", "json", str(prefix / "nginx.conf")], capture_output=True, text=True)
    assert report.returncode == 0, report.stdout + report.stderr
    assert json.loads(report.stdout or "[]") == []
