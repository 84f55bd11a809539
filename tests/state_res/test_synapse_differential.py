"""Our state resolution against Synapse's, on seeded random conflicted DAGs.

Synapse (the version the benchmarks pin) is installed once into tests/.venv-synapse; all DAGs
go to one `synapse_adapter.py` process, so Synapse's import is paid once. The count is
`--state-res-dags N` or `STATE_RES_DAGS`; CI runs a smaller default, the issue's full run is
1000. Half the DAGs are room version 12 (v2.1), the rest cycle through 2-11 (v2). A mismatch
reports the seed and the smallest regenerated DAG that still disagrees.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from bench.servers import SYNAPSE_VERSION
from homeserver.events.room_versions import ROOM_VERSIONS
from homeserver.events.state_res import resolve_state
from tests.state_res.generator import Dag, generate, run_sync
from tests.synapse_helpers import synapse_python

HERE = Path(__file__).parent
ADAPTER = HERE / "synapse_adapter.py"
FAILURES = HERE.parent / ".state-res-failures"
DEFAULT_DAGS = 150  # CI-sized; see the module docstring
EVENTS_PER_DAG = 300
V2_VERSIONS = [str(n) for n in range(2, 12)]


def _synapse_python() -> Path:
    return synapse_python()


def _count(config: pytest.Config) -> int:
    option = config.getoption("--state-res-dags", default=None)
    if option is not None:
        return int(option)
    return int(os.environ.get("STATE_RES_DAGS", DEFAULT_DAGS))


def _version_of(index: int) -> str:
    return "12" if index % 2 else V2_VERSIONS[(index // 2) % len(V2_VERSIONS)]


def _seed_of(index: int) -> int:
    return int(os.environ.get("STATE_RES_SEED", "17")) * 1_000_000 + index


def _synapse_resolve(python: Path, dags: list[Dag]) -> list[dict[str, Any]]:
    stdin = "".join(dag.to_json(i) + "\n" for i, dag in enumerate(dags))
    # The adapter runs from its own directory so that no `homeserver` shadows anything.
    done = subprocess.run(
        [str(python), str(ADAPTER)], input=stdin, capture_output=True, text=True, cwd=HERE
    )
    assert done.returncode == 0, done.stderr[-4000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    header, answers = lines[0], lines[1:]
    assert header["synapse_version"] == SYNAPSE_VERSION
    assert len(answers) == len(dags)
    return answers


def _ours(dag: Dag) -> list[list[str]]:
    def get_events(ids: Any) -> dict[str, Any]:
        return {i: dag.events[i] for i in ids if i in dag.events}

    version = ROOM_VERSIONS[dag.room_version]
    resolved = run_sync(resolve_state(version, dag.state_sets, get_events))
    return sorted([t, k, e] for (t, k), e in resolved.items())


def _disagrees(dag: Dag, answer: dict[str, Any]) -> str | None:
    if "error" in answer:
        return f"Synapse failed: {answer['error'][-2000:]}"
    if answer["event_id_mismatch"]:
        return f"event IDs differ (ours, Synapse's): {answer['event_id_mismatch'][:3]}"
    ours = _ours(dag)
    if ours == answer["resolved"]:
        return None
    theirs = {(t, k): e for t, k, e in answer["resolved"]}
    mine = {(t, k): e for t, k, e in ours}
    keys = sorted(k for k in theirs.keys() | mine.keys() if theirs.get(k) != mine.get(k))
    return "; ".join(f"{k}: ours {mine.get(k)} Synapse {theirs.get(k)}" for k in keys)


def _smallest_failures(python: Path, dags: list[Dag]) -> list[str]:
    """Regenerate each failing seed at growing sizes, all in one Synapse run; report the
    smallest DAG of each that still fails, written to a file for replay."""
    batches = [
        [generate(dag.seed, dag.room_version, n) for n in range(20, len(dag.events), 20)] + [dag]
        for dag in dags
    ]
    answers = iter(_synapse_resolve(python, [c for batch in batches for c in batch]))
    reports = []
    for batch in batches:
        found = None
        for candidate in batch:
            problem = _disagrees(candidate, next(answers))
            if problem is not None and found is None:
                found = (candidate, problem)
        assert found is not None
        candidate, problem = found
        # Kept outside pytest's temporary directories, which later runs clean up; a DAG with
        # Synapse's answer goes into regressions/ once understood.
        FAILURES.mkdir(exist_ok=True)
        path = FAILURES / f"seed-{candidate.seed}-v{candidate.room_version}.json"
        path.write_text(candidate.to_json())
        reports.append(
            f"seed {candidate.seed}, room version {candidate.room_version}: the smallest "
            f"failing DAG has {len(candidate.events)} events (tests.state_res.generator."
            f"generate({candidate.seed}, {candidate.room_version!r}, {len(candidate.events)})),"
            f" written to {path}: {problem}"
        )
    return reports


@pytest.mark.timeout(1800)
def test_state_resolution_matches_synapse(request: pytest.FixtureRequest) -> None:
    python = _synapse_python()
    count = _count(request.config)
    dags = [generate(_seed_of(i), _version_of(i), EVENTS_PER_DAG) for i in range(count)]
    answers = _synapse_resolve(python, dags)
    failures = [
        (dag, problem)
        for dag, answer in zip(dags, answers, strict=True)
        if (problem := _disagrees(dag, answer)) is not None
    ]
    if failures:
        reports = _smallest_failures(python, [dag for dag, _ in failures[:3]])
        pytest.fail(
            f"{len(failures)} of {count} DAGs resolve differently from Synapse "
            f"{SYNAPSE_VERSION}:\n" + "\n".join(reports)
        )
    conflicted = sum(1 for d in dags if len({frozenset(s.items()) for s in d.state_sets}) > 1)
    assert conflicted > count * 0.8, "the generator should mostly make conflicting states"
