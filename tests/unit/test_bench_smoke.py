"""The routing benchmark keeps working (a tiny run; no timing is asserted)."""

from __future__ import annotations

from bench.route_bench import fifty_rules, run


def test_route_benchmark_runs_and_reports_every_figure() -> None:
    results = run(seconds=0.05, size=50)
    assert set(results) == {
        "decisions_per_s_5_brokers_50_rules",
        "decisions_per_s_5_brokers_no_rules",
        "baseline_decision_model_build_and_json_per_s",
        "ratio_50_rules_to_no_rules",
        "ratio_50_rules_to_model_floor",
        "target_decisions_per_s",
    }
    assert all(value > 0 for value in results.values())
    assert len(fifty_rules().routing.rules) == 50


def test_aggregator_benchmark_runs_and_persists_every_message() -> None:
    """A few hundred messages through its own embedded servers; no timing is asserted."""
    from bench.aggregator_bench import run as run_aggregator

    results = run_aggregator(intents=50, progress=lambda _: None)
    assert results["messages"] == 200
    assert results["aggregator_messages_persisted_per_s"] > 0
    assert results["baseline_raw_batched_insert_rows_per_s"] > 0


def test_pipeline_benchmark_runs_end_to_end() -> None:
    """A hundred intents through the whole stack as processes; no timing is asserted."""
    from bench.pipeline_bench import run as run_pipeline

    results = run_pipeline(100, rates=[(200.0, 100)], profiles=(False,), soak_n=100, progress=lambda _: None)
    assert results["default_burst_intents_per_s"] > 0
    assert results["default_raw_jetstream_msgs_per_s"] > 0
    assert results["default_raw_batched_insert_rows_per_s"] > 0
    assert results["default_nats-server_cpu_ms_per_intent"] > 0
    assert results["default_postgres_cpu_ms_per_intent"] > 0
    assert results["default_cpu_ms_per_intent_all_processes"] > results["default_router_cpu_ms_per_intent"]
    assert results["default_soak_intents"] == 100
    assert results["default_aggregator_rss_mb_last_round"] > 0
    assert results["default_200_per_s_latency_p99_ms"] >= results["default_200_per_s_latency_p50_ms"] > 0
    assert all(results[f"default_{w}_peak_rss_mb"] > 0 for w in ("router", "aggregator", "executor-alpaca"))


def test_parent_orders_benchmark_runs_all_three_ways() -> None:
    """2,000 shares three ways on its own stack (a 10 s, 5-slice TWAP); no timing is asserted."""
    from bench.parents import run as run_parents
    from bench.parents import table

    results, outcomes = run_parents(2000, twap_s=10.0, slices=5, progress=lambda _: None)
    assert [o.name for o in outcomes] == ["single", "split", "twap+split"]
    assert all(sum(o.by_broker.values()) == 2000 for o in outcomes)
    assert results["single_brokers"] == 1
    assert results["split_brokers"] >= 3
    assert results["split_cost_bps"] < results["single_cost_bps"]  # the impact model, not a timing
    assert results["twap_split_children"] >= 5
    assert "| twap+split |" in table(outcomes)


def test_whatif_benchmark_records_replays_and_runs_the_command_alike() -> None:
    """A few hundred recorded intents on its own PostgreSQL, replayed in process and by the
    command (the benchmark stops if the two disagree); no timing is asserted."""
    from bench.whatif_bench import run as run_whatif

    results = run_whatif(400, progress=lambda _: None)
    assert results["decisions_replayed"] == 400
    assert 0 < results["decisions_changed"] < 400
    assert results["would_be_held"] > 0 and results["held_when_recorded"] > 0
    assert results["mbx_whatif_command_s"] > 0 and results["baseline_bare_route_s"] > 0


def test_latency_benchmark_measures_mbx_beside_the_raw_chain_and_counts_the_round_trips() -> None:
    """A few hundred intents and as many raw messages on its own stack, with the probes in every
    worker; no timing is asserted, only that every figure is there and the round trips are counted."""
    from bench.latency_bench import run as run_latency

    results = run_latency(100, 1.0, lambda _: None, capacity_intents=100, warmup=20, idle_s=1.0)
    for label in ("quiet", "after_burst"):
        for leg in ("to_request", "to_report", "to_row"):
            assert results[f"mbx_{label}_{leg}_p50_ms"] > 0
            assert results[f"floor_{label}_{leg}_p50_ms"] > 0
            assert results[f"ratio_{label}_{leg}_p99"] > 0
        # The strategy's publish, the journal write, the route's publish and the ledger read at
        # least (a broker without client order ids adds its own before placing).
        assert results[f"{label}_trips_critical_to_request_per_intent"] >= 4
        assert (
            results[f"{label}_trips_critical_to_report_per_intent"]
            > results[f"{label}_trips_critical_to_request_per_intent"]
        )
        assert results[f"stretch_{label}_router_until_journal_write_p50_ms"] > 0
    assert results["capacity_all_processes_cpu_ms_per_intent"] > results["capacity_router_cpu_ms_per_intent"] > 0
    assert results["idle_all_processes_cpu_ms_per_s"] > 0
