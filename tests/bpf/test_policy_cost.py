"""bench/policy_cost.py in a tiny run: every case takes its path at 1 and 3
rules (its numbers are the benchmark's business, not a test's)."""
from __future__ import annotations

from bench import policy_cost


def test_every_case_runs_its_path_at_each_rule_count():
    rows = policy_cost.measure([1, 3], repeat=300)
    cases = {r["case"] for r in rows}
    assert set(policy_cost.KEPT) | set(policy_cost.DENIED) <= cases
    assert {r["rules"] for r in rows if r["case"] in policy_cost.DENIED} == {1, 3}
    assert all(r.get("ns_per_packet", r.get("ms")) > 0 for r in rows)
