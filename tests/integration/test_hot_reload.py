"""A worker under traffic switches models from the registry without losing or double-scoring."""

import json
import threading
import time
from collections import defaultdict

import pytest

from tests.helpers import record, write_distance_bundle
from tests.integration.conftest import CLIENTS
from tests.integration.kafka_helpers import produce, read_topic, wait_committed, wait_for
from training.publish import WritableRegistry
from worker.contract.bundle import MODEL_FILE

pytestmark = [
    pytest.mark.integration,
    pytest.mark.parametrize("kafka_client", CLIENTS, indirect=True),
]


def test_switches_v1_to_v2_mid_stream_and_refuses_a_corrupt_candidate(
    kafka_bootstrap, topics, start_worker, tmp_path
):
    registry = WritableRegistry.create(tmp_path / "registry")
    for version in ("v1", "v2", "v3-corrupt"):
        # threshold 0.5 and features [1, 1, 1, 1] (score 1): every record alerts, so every
        # record's alert says which model scored it.
        registry.add(
            version, lambda d, v=version: write_distance_bundle(d, threshold=0.5, version=v)
        )
    with (registry.path_of("v3-corrupt") / MODEL_FILE).open("ab") as handle:
        handle.write(b"garbage")
    registry.set_current("v1", "initial")

    worker = start_worker(ANOMALY_MODEL_PATH=str(registry.root), ANOMALY_MODEL_POLL_SECONDS="0.2")
    worker.wait_ready()
    assert worker.metric("anomaly_model_info", {"version": "v1"}) == 1

    ends: dict[int, int] = {}
    sent: list[str] = []

    def traffic(rounds, prefix):
        for r in range(rounds):
            ids = [f"{prefix}-{r}-{i}" for i in range(200)]
            batch_ends = produce(
                kafka_bootstrap, topics.input, [record([1, 1, 1, 1], id=i) for i in ids]
            )
            for p, end in batch_ends.items():
                ends[p] = max(ends.get(p, 0), end)
            sent.extend(ids)
            time.sleep(0.1)

    producer = threading.Thread(target=traffic, args=(30, "a"))
    producer.start()
    wait_for(lambda: (worker.metric("anomaly_records_consumed_total") or 0) > 1000, 30)
    registry.set_current("v2", "promote mid-stream")
    producer.join(timeout=120)
    wait_committed(kafka_bootstrap, topics.group, topics.input, ends)
    assert worker.metric("anomaly_model_reloads_total", {"result": "loaded"}) == 1
    assert worker.metric("anomaly_model_info", {"version": "v2"}) == 1

    alerts = read_topic(kafka_bootstrap, topics.alerts, len(sent))
    bodies = [json.loads(a.value) for a in alerts]
    assert sorted(b["id"] for b in bodies) == sorted(sent)  # each record scored exactly once
    versions_by_partition = defaultdict(list)
    for body in sorted(bodies, key=lambda b: b["source"]["offset"]):
        versions_by_partition[body["source"]["partition"]].append(body["model_version"])
    seen = {v for vs in versions_by_partition.values() for v in vs}
    assert seen == {"v1", "v2"}
    for versions in versions_by_partition.values():
        assert versions == sorted(versions), "a partition went back to the old model"

    # A corrupt candidate is refused; v2 keeps serving.
    registry.set_current("v3-corrupt", "bad promotion")
    wait_for(lambda: worker.metric("anomaly_model_reloads_total", {"result": "refused"}) == 1, 20)
    more = produce(kafka_bootstrap, topics.input, [record([1, 1, 1, 1], id="after-corrupt")])
    for p, end in more.items():
        ends[p] = max(ends.get(p, 0), end)
    wait_committed(kafka_bootstrap, topics.group, topics.input, ends)
    last = [json.loads(a.value) for a in read_topic(kafka_bootstrap, topics.alerts, len(sent) + 1)]
    assert [b["model_version"] for b in last if b["id"] == "after-corrupt"] == ["v2"]
    assert not worker.exited() and "v3-corrupt refused" in worker.log()
    assert worker.terminate() == 0
