"""bench/profile_worker.py: py-spy's raw stacks put in the loop's stages, per thread."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

MAIN = (
    "thread (7): MainThread;<module> (worker/__main__.py:5);Pipeline.run (worker/pipeline.py:102)"
)


def test_samples_go_to_the_outermost_stage_and_waits_are_split_out(tmp_path):
    sys.path.insert(0, str(ROOT))
    from bench.profile_worker import summarise

    raw = tmp_path / "raw.txt"
    raw.write_text(
        "\n".join(
            [
                f"{MAIN};Pipeline._collect (worker/pipeline.py:150);poll (kafka/consumer.py:1) 6",
                f"{MAIN};Pipeline._collect (worker/pipeline.py:150);select (selectors.py:9) 2",
                f"{MAIN};Pipeline._process_batch (worker/pipeline.py:189);"
                "Pipeline.process (worker/pipeline.py:211);"
                "decode_batch (worker/contract/decode.py:1) 5",
                # An alert's produce call counts as alerts: the outer stage decides.
                f"{MAIN};Pipeline._advance (worker/pipeline.py:220);"
                "BatchProcessor.finish (worker/processing.py:120);"
                "BatchProcessor._alert (worker/processing.py:172);"
                "Outputs._send (worker/delivery/outputs.py:224) 3",
                # Batch N's model call, still running when the loop finishes N.
                f"{MAIN};Pipeline._advance (worker/pipeline.py:223);"
                "BatchProcessor.finish (worker/processing.py:120);"
                "Future.result (concurrent/futures/_base.py:451);"
                "Condition.wait (threading.py:327) 2",
                "thread (11): anomaly-score_0;Thread.run (threading.py:982);"
                "BatchProcessor._score (worker/processing.py:112);"
                "ServedModel.score (worker/model/served.py:99) 4",
                f"{MAIN};Pipeline.commit (worker/pipeline.py:120);flush (x.py:1) 4",
                f"{MAIN};HealthState.beat (worker/observe/health.py:3) 1",
                "thread (9): health;Thread.run (threading.py:982);Event.wait (threading.py:629);"
                "Condition.wait (threading.py:327) 7",
                "thread (10): kafka-io-prof-abc123;run (kafka/x.py:1) 2",
            ]
        )
        + "\n"
    )
    threads = summarise(raw)
    assert dict(threads["main"]) == {
        "poll": 6,
        "poll (waiting)": 2,
        "decode": 5,
        "alerts": 3,
        "waiting for the model call (waiting)": 2,
        "commit": 4,
        "other: HealthState.beat": 1,
    }
    assert dict(threads["anomaly-score_0"]) == {"score": 4}
    assert dict(threads["health"]) == {"other (waiting)": 7}
    assert dict(threads["kafka-io"]) == {"other": 2}
