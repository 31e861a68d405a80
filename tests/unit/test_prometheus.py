"""mipart.prometheus: the one writer and reader of Prometheus text, and the fake engine's use of it."""

from __future__ import annotations

from mipart.prometheus import CONTENT_TYPE, Exposition, escape_label, metric_sum


def test_families_samples_and_values():
    out = Exposition()
    out.family("mipart_x", "gauge", "A gauge.\nsecond line", [({}, True), ({"a": "1"}, 3), ({"a": "2"}, 0.25)])
    out.family("mipart_restarts_total", "counter", "A counter.", [({"unit": "u"}, 2)])
    assert out.text() == (
        "# HELP mipart_x A gauge.\\nsecond line\n"
        "# TYPE mipart_x gauge\n"
        "mipart_x 1\n"
        'mipart_x{a="1"} 3\n'
        'mipart_x{a="2"} 0.25\n'
        "# HELP mipart_restarts_total A counter.\n"
        "# TYPE mipart_restarts_total counter\n"
        'mipart_restarts_total{unit="u"} 2\n'
    )
    assert CONTENT_TYPE.startswith("text/plain; version=0.0.4")


def test_label_values_are_escaped():
    assert escape_label('a"b\\c\nd') == 'a\\"b\\\\c\\nd'
    out = Exposition()
    out.family("m", "gauge", "h", [({"service": 'we"ird'}, 1.0)])
    assert 'm{service="we\\"ird"} 1.0' in out.text()


def test_metric_sum_adds_label_sets_and_knows_absence():
    text = (
        '# HELP vllm:num_requests_waiting x\nvllm:num_requests_waiting{model_name="a"} 7.0\n'
        'vllm:num_requests_waiting{model_name="b"} 5.0\nvllm:num_requests_waiting_other 100\nvllm:num_requests_running 3\n'
    )
    assert metric_sum(text, "vllm:num_requests_waiting") == 12.0
    assert metric_sum(text, "vllm:num_requests_running") == 3.0
    assert metric_sum(text, "vllm:kv_cache_usage_perc") is None
    assert metric_sum('vllm:x{a="1"} NaN-ish\n', "vllm:x") is None


def test_what_the_writer_writes_the_reader_reads():
    out = Exposition()
    out.family("vllm:num_requests_running", "gauge", "h", [({"model_name": "a"}, 2.0), ({"model_name": "b"}, 1.0)])
    assert metric_sum(out.text(), "vllm:num_requests_running") == 3.0


def test_the_fake_engine_writes_vllm_metrics_with_the_shared_writer():
    from mipart.sim.engine.openai import render_metrics
    from mipart.sim.engine.state import EngineConfig, EngineState

    state = EngineState(running=2, waiting=5, prompt_tokens=7, success={"stop": 0, "length": 1})
    text = render_metrics(EngineConfig(model="m"), state)
    assert metric_sum(text, "vllm:num_requests_waiting") == 5.0
    assert metric_sum(text, "vllm:num_requests_running") == 2.0
    assert 'vllm:request_success_total{finished_reason="length",model_name="m"} 1.0' in text
    assert "# TYPE vllm:prompt_tokens_total counter" in text  # as vLLM (prometheus_client) writes it
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            name = line.split()[2]
            assert any(s.startswith(name) for s in text.splitlines() if not s.startswith("#")), line
