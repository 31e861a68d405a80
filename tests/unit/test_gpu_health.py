"""Health from the GPU side: RAS counters and hwmon read through the backend seam (on a simulated
root the simulator's gpu_signals writes), the RAS, generation and progress probes, and the state
machine's reaction to a decisive failure."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
import specs
from responses import Response

from mipart.api.contract import PartitionGpu
from mipart.api.host import HostSnapshot
from mipart.api.metrics import gpu_metrics
from mipart.errors import UserError
from mipart.gpu import open_backend
from mipart.health.generation import GenerationCheck
from mipart.health.gpu_errors import GpuErrors
from mipart.health.machine import InstanceHealth
from mipart.health.probe import PASSED, ProbeResult
from mipart.health.progress import TokenProgress
from mipart.health.states import DEGRADED, FAILED, READY, STARTING, UNHEALTHY
from mipart.profile.schema import GenerationProbe, HealthSpec
from mipart.prometheus import Exposition
from mipart.serving.spec import InstanceSpec
from mipart.sim import gpu_signals, kernel
from mipart.values import GpuSignals


def spec(number: int, gpu: int, socket: str = "") -> InstanceSpec:
    bare = replace(specs.spec(number), model="m", served_model_name="m", render_nodes=(), argv=())
    return replace(bare, physical_gpus=(gpu,), socket=socket or bare.socket)


@pytest.fixture
def root(tmp_path):
    kernel.create(tmp_path / "sys", "mi300x", 4, "SPX", "NPS1")
    return tmp_path / "sys"


def test_the_backend_reads_what_the_simulator_writes(root):
    backend = open_backend(root)
    gpus = backend.discover().physical
    assert backend.signals(gpus[2]) == GpuSignals(2, gpus[2].bdf)  # no RAS files, no hwmon: nothing, no error
    assert gpu_signals.add_errors(root, 2, "umc", uncorrectable=1, correctable=5) == (1, 5)
    assert gpu_signals.add_errors(root, 2, "umc", uncorrectable=2) == (3, 5)
    gpu_signals.add_errors(root, 2, "gfx", correctable=1)
    gpu_signals.set_sensors(root, 2, temperature=71.5, power=612.25)
    got = backend.signals(gpus[2])
    assert got.errors == (("gfx", 0, 1), ("umc", 3, 5))
    assert (got.uncorrectable, got.correctable) == (3, 6)
    assert got.temperatures == (("junction", 71.5),) and got.power_w == 612.25
    assert backend.signals(gpus[1]) == GpuSignals(1, gpus[1].bdf)


def test_the_simulator_refuses_a_gpu_it_does_not_have(root):
    with pytest.raises(UserError, match="no GPU 9 .* 0-3"):
        gpu_signals.add_errors(root, 9, uncorrectable=1)


def test_a_garbled_counter_file_is_skipped(root):
    gpu_signals.add_errors(root, 0, "umc", uncorrectable=1)
    dev = open_backend(root).discover().physical[0].path
    (dev / "ras" / "sdma_err_count").write_text("garbage\n")
    assert open_backend(root).signals(open_backend(root).discover().physical[0]).errors == (("umc", 1, 0),)


def test_an_uncorrectable_rise_fails_exactly_that_gpus_instances(root):
    probe = GpuErrors(root, fresh_for=0)
    gpu_signals.add_errors(root, 1, "umc", uncorrectable=2, correctable=9)  # before the agent: the baseline
    health = HealthSpec()

    async def round_() -> list[ProbeResult]:
        return [await probe.check(None, spec(n, gpu), health) for n, gpu in ((0, 0), (1, 1), (2, 1), (3, 3))]

    assert asyncio.run(round_()) == [PASSED] * 4
    gpu_signals.add_errors(root, 1, "umc", correctable=50)
    assert asyncio.run(round_()) == [PASSED] * 4  # correctable errors are only counted
    gpu_signals.add_errors(root, 1, "umc", uncorrectable=1)
    results = asyncio.run(round_())
    assert results[0] == results[3] == PASSED
    assert results[1] == results[2]
    failed = results[1]
    assert not failed.ok and failed.decisive and not failed.restart
    assert failed.error.startswith("GPU 1 (") and "uncorrectable RAS errors rose (umc 2 -> 3)" in failed.error
    assert "reset or replace the GPU" in failed.error


def test_a_counter_the_driver_resets_on_read_still_shows_a_rise(root):
    probe = GpuErrors(root, fresh_for=0)
    gpu_signals.add_errors(root, 0, "umc", uncorrectable=5)

    def check() -> ProbeResult:
        return asyncio.run(probe.check(None, spec(0, 0), HealthSpec()))

    assert check() == PASSED  # 5 before the agent: accepted
    dev = open_backend(root).discover().physical[0].path
    (dev / "ras/umc_err_count").write_text("ue: 0\nce: 0\n")  # read and reset
    assert check() == PASSED
    gpu_signals.add_errors(root, 0, "umc", uncorrectable=2)  # below the old 5, but a rise
    result = check()
    assert not result.ok and "umc 0 -> 2" in result.error
    (dev / "ras/umc_err_count").write_text("ue: 0\nce: 0\n")
    assert check() == result  # once faulted, faulted for this agent


def test_a_counter_inaccessible_during_a_reset_is_no_reading(root):
    """ue 3, `Query currently inaccessible`, ue 3 is no rise (finding 10): the last real count is kept."""
    probe = GpuErrors(root, fresh_for=0)
    gpu_signals.add_errors(root, 0, "umc", uncorrectable=3)

    def check() -> ProbeResult:
        return asyncio.run(probe.check(None, spec(0, 0), HealthSpec()))

    assert check() == PASSED
    kernel.set_resetting(root, 0, True)
    dev = root / "bus/pci/devices/0000:05:00.0"
    assert (dev / "ras/umc_err_count").read_text() == "Query currently inaccessible\n"
    assert check() == PASSED  # inaccessible: not a reading
    kernel.set_resetting(root, 0, False)
    assert check() == PASSED  # 3 again: no rise
    gpu_signals.add_errors(root, 0, "umc", uncorrectable=1)
    assert "umc 3 -> 4" in check().error


def test_a_host_without_gpus_gives_no_verdict(tmp_path):
    assert asyncio.run(GpuErrors(tmp_path).check(None, spec(0, 0), HealthSpec())) == PASSED


@pytest.mark.parametrize("state", [READY, DEGRADED, STARTING])
def test_a_gpu_fault_fails_the_instance_whatever_its_state(state):
    h = InstanceHealth(0, state=state)
    h.condemn("GPU 0 faulted", restart=False)
    assert h.state == FAILED and h.last_error == "GPU 0 faulted" and not h.in_rotation


def test_a_wedged_engine_leaves_rotation_at_once_and_is_restarted_but_not_while_starting():
    h = InstanceHealth(0, state=READY)
    assert h.condemn("wedged", restart=True) is True  # nginx membership changed
    assert h.state == UNHEALTHY and h.needs_restart(0.0, HealthSpec())
    starting = InstanceHealth(1, state=STARTING)
    assert starting.condemn("wedged", restart=True) is False and starting.state == STARTING


class Engine:
    """A stand-in client for one engine: its token counter, and completions that work or hang."""

    def __init__(self):
        self.tokens, self.wedged, self.posts = 0.0, False, []

    async def get(self, socket, path, timeout, limit=None):
        assert path == "/metrics" and socket == spec(0, 0).socket
        return Response(200, f'vllm:generation_tokens_total{{model_name="m"}} {self.tokens}\n')

    async def post_json(self, socket, path, data, timeout, limit=None):
        assert path == "/v1/completions" and data["max_tokens"] == 1 and data["model"] == "m"
        self.posts.append(timeout)
        if self.wedged:
            raise asyncio.TimeoutError()
        self.tokens += 1
        return Response(200, data={"usage": {"completion_tokens": 1}})


HEALTH = HealthSpec(generation_probes=(("chat", GenerationProbe(idle=0.3, timeout=2.0)),))


def test_without_a_generation_probe_nothing_is_asked():
    class Nothing:
        async def get(self, *a, **k):
            raise AssertionError("asked")

        post_json = get

    assert asyncio.run(GenerationCheck().check(Nothing(), spec(0, 0), HealthSpec())) == PASSED


class Probed:
    """One engine, its generation probe and the probe's clock (seconds, moved by hand)."""

    def __init__(self, monkeypatch):
        self.now, self.engine, self.probe = 100.0, Engine(), GenerationCheck()
        monkeypatch.setattr("mipart.health.generation.time.monotonic", lambda: self.now)

    def check(self, after: float = 0.0) -> ProbeResult:
        self.now += after
        return asyncio.run(self.probe.check(self.engine, spec(0, 0), HEALTH))


def test_traffic_proves_health_and_an_idle_instance_gets_one_token(monkeypatch):
    probed = Probed(monkeypatch)
    engine, check = probed.engine, probed.check
    assert check() == PASSED and engine.posts == [2.0]  # a new server proves it generates once
    for _ in range(10):  # busy: tokens rise between probes, no completion is sent
        engine.tokens += 7
        assert check(0.2) == PASSED
    assert engine.posts == [2.0]
    assert check(0.05) == PASSED and engine.posts == [2.0]  # 0.25 s since the read before the last rise
    assert check(0.1) == PASSED and len(engine.posts) == 2  # idle past 0.3 s: one token
    assert check(0.2) == PASSED and len(engine.posts) == 2  # its own token is not taken for traffic


def test_a_wedged_engine_fails_decisively_even_after_traffic(monkeypatch):
    probed = Probed(monkeypatch)
    engine, check = probed.engine, probed.check
    check()
    engine.tokens += 5  # tokens made just before it wedged
    engine.wedged = True
    assert check(0.2) == PASSED  # the rise happened after the last read: proof dated then, 0.2 s ago
    result = check(0.2)  # 0.4 s since the last moment it is known to have generated
    assert not result.ok and result.decisive and result.restart
    assert "did not finish within 2s" in result.error and "wedged" in result.error


class Loaded:
    """One engine's three series as the progress probe reads them (running, generated, prompt), and the
    probe's clock (seconds, moved by hand)."""

    def __init__(self, monkeypatch):
        self.now, self.running, self.generated, self.prompt = 100.0, 0, 0.0, 0.0
        self.probe, self.asked = TokenProgress(), []
        monkeypatch.setattr("mipart.health.progress.time.monotonic", lambda: self.now)

    async def get(self, socket, path, timeout, limit=None):
        self.asked.append(path.split("?", 1)[1])
        return Response(
            200,
            f'vllm:num_requests_running{{model_name="m"}} {self.running}\n'
            f'vllm:generation_tokens_total{{model_name="m"}} {self.generated}\n'
            f'vllm:prompt_tokens_total{{model_name="m"}} {self.prompt}\n',
        )

    def check(self, after: float = 0.0, socket: str = "") -> ProbeResult:
        self.now += after
        return asyncio.run(self.probe.check(self, spec(0, 0, socket), HealthSpec(stall_after=10.0)))


def test_a_loaded_engine_that_makes_no_token_for_stall_after_leaves_rotation(monkeypatch):
    engine = Loaded(monkeypatch)
    assert engine.check() == PASSED
    assert engine.asked == [
        "name[]=vllm:num_requests_running&name[]=vllm:generation_tokens_total&name[]=vllm:prompt_tokens_total"
    ]
    engine.running = 3
    for _ in range(4):  # load with progress: tokens move between reads
        engine.generated += 50
        assert engine.check(2.0) == PASSED
    assert engine.check(9.9) == PASSED  # no token for 9.9 s: not yet
    result = engine.check(0.2)  # 10.1 s since the counters last moved, 3 requests running
    assert not result.ok and result.decisive and result.restart
    assert result.error.startswith("3 requests running and no token generated or prefilled for 10.1s")
    assert "health.stall_after 10s" in result.error and "wedged" in result.error


def test_prefill_progress_an_idle_engine_and_a_new_server_restart_the_clock(monkeypatch):
    engine = Loaded(monkeypatch)
    engine.running = 1
    engine.check()
    engine.prompt += 8000  # a long prefill done: its prompt counted with its first token
    assert engine.check(9.0) == PASSED
    assert engine.check(9.0) == PASSED  # 9 s since the prompt counter moved
    engine.running = 0
    assert engine.check(9.0) == PASSED  # nothing running: nothing can stall
    engine.running = 1
    assert engine.check(0.1) == PASSED and engine.check(9.8) == PASSED  # the clock restarted when it went idle
    elsewhere = "/run/mipart-vllm/sockets/9/http.sock"
    assert engine.check(5.0, socket=elsewhere) == PASSED  # another server (restarted elsewhere): a new clock
    assert not engine.check(10.0, socket=elsewhere).ok


def test_an_idle_engine_is_read_every_quarter_stall_after_and_its_clock_starts_when_requests_do(monkeypatch):
    engine = Loaded(monkeypatch)  # stall_after 10 s: an idle engine is read every 2.5 s
    engine.check()
    engine.check(2.0)  # nothing running, and nothing happened since the read before: idle
    for _ in range(4):
        engine.check(0.6)  # within 2.5 s of the last read: not read
    assert len(engine.asked) == 2, engine.asked
    engine.check(0.2)  # 2.6 s after it
    assert len(engine.asked) == 3, engine.asked
    engine.running = 2  # requests start, and the engine wedges before their first token
    assert engine.check(2.4) == PASSED and len(engine.asked) == 3  # not read yet
    assert engine.check(0.2) == PASSED and len(engine.asked) == 4  # read: the clock starts here, not at the idle read
    for reads in range(5, 9):
        assert engine.check(2.0) == PASSED and len(engine.asked) == reads  # under load: every round reads
    assert engine.check(1.9) == PASSED  # 9.9 s since the read that first saw them running
    result = engine.check(0.2)
    assert not result.ok and result.error.startswith("2 requests running and no token generated or prefilled for 10.1s")


def test_an_engine_caught_between_requests_is_read_every_round(monkeypatch):
    engine = Loaded(monkeypatch)
    engine.check()
    engine.generated += 40  # traffic since: none running at this read, but not idle
    engine.check(2.0)
    engine.check(0.5)
    assert len(engine.asked) == 3, engine.asked


def test_an_engine_without_the_series_gets_no_verdict(monkeypatch):
    engine = Loaded(monkeypatch)

    async def without(socket, path, timeout, limit=None):
        return Response(200, "# no vllm series here\n")

    engine.get = without
    assert all(engine.check(30.0) == PASSED for _ in range(3))


def test_gpu_metrics_per_gpu_and_partition():
    gpus = (
        PartitionGpu(
            index=0,
            bdf="0000:11:00.0",
            compute="DPX",
            memory="NPS2",
            compute_want=None,
            memory_want=None,
            matches=True,
            logical_gpus=(0, 1),
        ),
    )
    signals = (GpuSignals(0, "0000:11:00.0", (("umc", 1, 4),), (("junction", 70.0), ("mem", 60.5)), 500.0),)
    out = Exposition()
    gpu_metrics(out, HostSnapshot(gpus=gpus, signals=signals))
    text = out.text()
    assert 'mipart_logical_gpu_info{logical_gpu="1",gpu="0",partition="1"} 1' in text
    assert 'mipart_gpu_partition_info{gpu="0",bdf="0000:11:00.0",compute="DPX",memory="NPS2"} 1' in text
    assert 'mipart_gpu_ras_uncorrectable_errors_total{gpu="0",bdf="0000:11:00.0",block="umc"} 1' in text
    assert 'mipart_gpu_ras_correctable_errors_total{gpu="0",bdf="0000:11:00.0",block="umc"} 4' in text
    assert 'mipart_gpu_temperature_celsius{gpu="0",bdf="0000:11:00.0",sensor="mem"} 60.5' in text
    assert 'mipart_gpu_power_watts{gpu="0",bdf="0000:11:00.0"} 500.0' in text
