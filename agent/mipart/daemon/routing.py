"""nginx matching readiness: the config lists only instances in rotation, and nginx runs it."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from mipart.serving.nginx import NginxFiles, NginxRejected, install_config
from mipart.serving.nginx_conf import render_nginx
from mipart.serving.spec import InstanceSpec


async def update_nginx(nginx: NginxFiles, runner, log, profile, specs: Mapping[int, InstanceSpec], ready: frozenset[int], last_error: str) -> str:
    """Install the config for `ready` if nginx -t accepts it, and start nginx if it does not run.

    Returns nginx's refusal ("" when accepted); a refusal is logged when it is new.
    """
    text = render_nginx(profile, tuple(specs.values()), ready, nginx.prefix)
    try:
        changed = await asyncio.to_thread(install_config, nginx, text)
    except NginxRejected as exc:
        if last_error != str(exc):
            log.error("nginx.config_rejected", reason=str(exc), kept=str(nginx.conf), rejected=str(nginx.rejected))
        return str(exc)
    if changed or not runner.nginx_running(nginx):
        await asyncio.to_thread(runner.ensure_nginx, nginx)
        log.info("nginx.updated", ready=len(ready), instances=len(specs))
    return ""
