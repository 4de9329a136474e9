"""Configuration: routing weights, rules, kill switches and rate limits, changed through the
same validated, compare-and-set, audited path as `mbx config set` (a bad field is named and
nothing is applied), and previewed on last week's orders before (``dashboard.whatif``); the
change history; dead letters with filters, a dry run and a replay."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import streamlit as st
import yaml

from contracts import BrokerName, DeadLetterStage
from dashboard.backend import Backend
from dashboard.whatif import PREVIEW_KEY, preview_change, show_whatif
from dashboard.widgets import answer, frame
from workers.domain.config import MbxConfig
from workers.ops.dlq import Filters, Letter, replayable
from workers.ops.errors import OperatorError

PREVIEW = "Preview on last week's orders"


def render(backend: Backend) -> None:
    live = answer("live config", backend.live)
    if live is None:
        return
    if live.config is None:
        st.info("no live config yet: the router seeds it from mbx.yaml when it first starts")
        return
    config = backend.live_config(live)
    st.caption(f"live config revision {live.revision}")
    if live.refusal:
        st.warning(f"the router refused the last change: {live.refusal}")
    edit_form(backend, config)
    st.subheader("Change history", anchor=False)
    history = answer("config changes (database)", backend.config_history) or []
    st.dataframe(frame(history, ["changed_at", "revision", "changed_by", "summary"]), hide_index=True, key="history")
    st.subheader("Dead letters", anchor=False)
    dead_letters(backend)


def _windows(config: MbxConfig, broker: BrokerName) -> list[dict[str, Any]]:
    limit = config.brokers[broker].rate_limit
    if limit is None:
        return []
    return [window.model_dump() for window in (limit if isinstance(limit, list) else [limit])]


def _rate_limit(config: MbxConfig, broker: BrokerName) -> dict[str, Any] | None:
    """The broker's first rate window, which the form edits (any others are kept as they are)."""
    windows = _windows(config, broker)
    return windows[0] if windows else None


def edit_form(backend: Backend, config: MbxConfig) -> None:
    weights = config.routing.weights
    switches = config.risk.kill_switches
    brokers = config.enabled_brokers()
    with st.form("config_edit"):
        st.markdown("**Routing weights** (must add up to 1)")
        left, middle, right = st.columns(3)
        cost = left.number_input("cost", value=weights.cost, step=0.05, format="%.2f", key="w_cost")
        speed = middle.number_input("speed", value=weights.speed, step=0.05, format="%.2f", key="w_speed")
        fill = right.number_input("fill quality", value=weights.fill, step=0.05, format="%.2f", key="w_fill")
        st.markdown("**Kill switches**")
        switch_cells = st.columns(4)
        stop_all = switch_cells[0].checkbox("stop all trading", value=switches.all, key="kill_all")
        stopped = switch_cells[1].multiselect(
            "brokers", [str(b) for b in BrokerName], default=[str(b) for b in switches.brokers], key="kill_brokers"
        )
        strategies = switch_cells[2].text_input(
            "strategies", value=", ".join(switches.strategies), key="kill_strategies"
        )
        symbols = switch_cells[3].text_input("symbols", value=", ".join(switches.symbols), key="kill_symbols")
        st.markdown("**Rate limits** (requests per window; empty: the broker's documented limit)")
        limits: dict[BrokerName, tuple[str, str]] = {}
        for cell, broker in zip(st.columns(max(len(brokers), 1)), brokers, strict=False):
            current = _rate_limit(config, broker) or {}
            limits[broker] = (
                cell.text_input(f"{broker} requests", value=str(current.get("requests", "")), key=f"rl_{broker}_n"),
                cell.text_input(
                    f"{broker} per seconds", value=str(current.get("per_seconds", "")), key=f"rl_{broker}_s"
                ),
            )
        rules_now = yaml.safe_dump([r.model_dump(mode="json", exclude_defaults=True) for r in config.routing.rules])
        rules = st.text_area(
            "**Routing rules** (YAML list, see docs/routing.md)", value=rules_now, key="rules", height=160
        )
        name_cell, reason_cell = st.columns(2)
        operator = name_cell.text_input("your name (for the audit trail)", key="operator")
        reason = reason_cell.text_input("why", key="reason")
        preview_cell, apply_cell = st.columns(2)
        previewed = preview_cell.form_submit_button(PREVIEW)
        submitted = apply_cell.form_submit_button("Apply")
    weights_asked = {"cost": cost, "speed": speed, "fill": fill}
    switches_asked = {"all": stop_all, "brokers": stopped, "strategies": _names(strategies), "symbols": _names(symbols)}
    if not (submitted or previewed):
        shown = st.session_state.get(PREVIEW_KEY)
        if (
            shown is not None
            and _quietly(lambda: changes_from(config, weights_asked, switches_asked, limits, rules)) == shown[0]
        ):
            show_whatif(shown[1])  # the form still holds the edit that was previewed
        return
    outcome = "no preview" if previewed else "not applied"
    try:
        changes = changes_from(config, weights_asked, switches_asked, limits, rules)
    except ValueError as exc:
        st.error(f"{outcome}: {exc}")
        return
    if not changes:
        st.info("nothing changed")
        return
    if previewed:
        preview_change(backend, config, changes)
        return
    st.session_state.pop(PREVIEW_KEY, None)
    summary = "; ".join(f"{k}={json.dumps(v)}" for k, v in changes.items()) + (f" ({reason})" if reason else "")
    try:
        revision = backend.change_config(changes, operator, summary)
    except OperatorError as exc:
        st.error(f"not applied: {exc}")
        return
    st.success(f"applied: live config revision {revision} ({summary})")


def _quietly(changes: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
    """The form's changes, or None when the form holds something invalid."""
    try:
        return changes()
    except ValueError:
        return None


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def _number(text: str, key: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{key}: {text!r} is not a number") from None


def changes_from(
    config: MbxConfig,
    weights: dict[str, float],
    switches: dict[str, Any],
    limits: dict[BrokerName, tuple[str, str]],
    rules_yaml: str,
) -> dict[str, Any]:
    """The dotted-key changes the form asks for, against the live config (only what differs)."""
    changes: dict[str, Any] = {}
    if weights != config.routing.weights.model_dump():
        changes["routing.weights"] = weights
    current_switches = config.risk.kill_switches.model_dump(mode="json")
    for key, value in switches.items():
        if value != current_switches[key]:
            changes[f"risk.kill_switches.{key}"] = value
    for broker, (requests, per_seconds) in limits.items():
        current = _rate_limit(config, broker)
        key = f"brokers.{broker}.rate_limit"
        if not requests.strip() and not per_seconds.strip():
            wanted = None
        else:
            wanted = dict(current or {}) | {
                "requests": _number(requests, f"{key}.requests"),
                "per_seconds": _number(per_seconds, f"{key}.per_seconds"),
            }
            if float(wanted["requests"]).is_integer():
                wanted["requests"] = int(wanted["requests"])
        if wanted != current:
            others = _windows(config, broker)[1:]
            changes[key] = [wanted, *others] if wanted is not None and others else wanted
    try:
        rules = yaml.safe_load(rules_yaml) or []
    except yaml.YAMLError as exc:
        raise ValueError(f"routing.rules: not valid YAML ({exc})") from None
    if rules != [r.model_dump(mode="json", exclude_defaults=True) for r in config.routing.rules]:
        changes["routing.rules"] = rules
    return changes


def dead_letters(backend: Backend) -> None:
    cells = st.columns(3)
    stage = cells[0].selectbox("stage", ["any", *map(str, DeadLetterStage)], key="dlq_stage")
    subject = cells[1].text_input("subject (glob)", key="dlq_subject").strip() or None
    error = cells[2].text_input("error contains", key="dlq_error").strip() or None
    filters = Filters(stage=None if stage == "any" else DeadLetterStage(stage), subject=subject, error=error)
    letters = answer("dead letters (NATS)", lambda: backend.letters(filters)) or []
    st.dataframe(
        frame(
            (
                {
                    "seq": i.seq,
                    "stage": str(i.letter.stage),
                    "subject": i.letter.original_subject,
                    "intent": i.letter.correlation_id,
                    "tries": i.letter.delivery_count,
                    "when": i.letter.created_at,
                    "error": i.letter.error[:200],
                }
                for i in letters
            ),
            ["seq", "stage", "subject", "intent", "tries", "when", "error"],
        ),
        hide_index=True,
        key="dead_letters",
    )
    st.caption(f"{len(letters)} dead letters among the newest 200")
    chosen = st.multiselect("replay these", [i.seq for i in letters], key="dlq_chosen")
    picked = [i for i in letters if i.seq in chosen]
    cells = st.columns(3)
    operator = cells[0].text_input("your name (for the audit trail)", key="dlq_operator")
    dry = cells[1].button("Dry run", key="dlq_dry", disabled=not picked)
    replay = cells[2].button(
        "Replay", key="dlq_replay", disabled=not picked or st.session_state.get("dlq_dry_run") != chosen
    )
    if dry:
        st.session_state["dlq_dry_run"] = list(chosen)
        show_dry_run(picked)
        st.rerun()  # the Replay button is enabled for exactly this selection
    if st.session_state.get("dlq_dry_run") == chosen and chosen and not replay:
        show_dry_run(picked)
    if replay:
        ready, _ = replayable(picked)
        try:
            done = backend.replay(ready, operator)
        except OperatorError as exc:
            st.error(f"not replayed: {exc}")
        else:
            st.session_state.pop("dlq_dry_run", None)
            st.success(f"replayed {done} of {len(picked)} dead letters (recorded in dlq_replays)")
    st.markdown("**Recent replays**")
    replays = answer("replays (database)", backend.replays) or []
    st.dataframe(
        frame(replays, ["replayed_at", "letter_id", "stage", "original_subject", "intent_id", "replayed_by"]),
        hide_index=True,
        key="replays",
    )


def show_dry_run(picked: list[Letter]) -> None:
    ready, cut = replayable(picked)
    for item in ready:
        st.markdown(
            f"would replay {item.seq} to `{item.letter.original_subject}` ({item.letter.correlation_id or '-'})"
        )
    for item in cut:
        st.markdown(f"cannot replay {item.seq}: only part of its payload was kept")
    st.info(f"dry run: {len(ready)} dead letters would be replayed; press Replay to send them")
