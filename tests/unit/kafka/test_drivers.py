"""The client drivers' own duties, with the client faked at its boundary."""

import asyncio

import pytest

from tests.fakes import chunk, make_pipeline, messages
from tests.helpers import record
from worker.kafka.ports import OutputTopicError


def test_a_missing_output_topic_is_one_clear_error():
    from kafka.errors import KafkaTimeoutError

    from worker.kafka.kafka_python_producer import KafkaPythonProducer

    class Client:
        def partitions_for(self, topic):
            if topic == "gone":
                raise KafkaTimeoutError("Failed to update metadata after 10.0 secs.")
            return {0, 1}

    producer = KafkaPythonProducer.__new__(KafkaPythonProducer)
    producer._producer = Client()
    producer.check_topic("alerts")
    with pytest.raises(OutputTopicError, match="output topic 'gone' is missing or not writable"):
        producer.check_topic("gone")


class FakeCoordinator:
    """kafka-python's coordinator as its rebalance listener uses it (on the IO thread)."""

    def __init__(self):
        self.commits = []

    async def _commit_offsets_sync_async(self, offsets, timeout_ms=None):
        self.commits.append({(tp.topic, tp.partition): om.offset for tp, om in offsets.items()})


def test_kafka_python_revocation_awaits_the_commit_on_the_io_thread(tmp_path):
    from kafka import TopicPartition

    from worker.kafka.kafka_python import _Listener

    pipeline, _consumer, producer, log = make_pipeline(tmp_path, [], batch_max_wait_seconds=60)
    pipeline.add(chunk(messages(0, [record([5, 5, 5, 5])] * 3)))
    client = type("Client", (), {"_coordinator": FakeCoordinator()})()
    listener = _Listener(pipeline, client, 5000)
    asyncio.run(listener.on_partitions_revoked({TopicPartition("in", 0)}))
    assert len(producer.sent) == 3 and log == ["flush"]
    assert client._coordinator.commits == [{("in", 0): 3}]
    assert pipeline.metrics.registry.get_sample_value("anomaly_offset_commits_total") == 1


class FakeRdMessage:
    """The parts of a confluent_kafka.Message the adapter reads."""

    def __init__(self, partition, offset, value, error=None):
        self._p, self._o, self._v, self._e = partition, offset, value, error

    def topic(self):
        return "in"

    def partition(self):
        return self._p

    def offset(self):
        return self._o

    def value(self):
        return self._v

    def error(self):
        return self._e


def test_confluent_poll_returns_the_first_record_without_waiting_for_a_full_batch(monkeypatch):
    """librdkafka's consume(n, t) waits for n records or all of t; a batch must not."""
    from worker.kafka import confluent
    from worker.kafka.confluent import ConfluentConsumer

    monkeypatch.setattr(confluent, "_VALUE", FakeRdMessage.value)
    monkeypatch.setattr(confluent, "_ERROR", FakeRdMessage.error)
    calls = []

    class Client:
        queued = [FakeRdMessage(0, 5, b"a"), FakeRdMessage(1, 9, b"b"), FakeRdMessage(0, 6, b"c")]

        def consume(self, n, timeout):
            calls.append(("consume", n, timeout))
            taken, self.queued = self.queued[:n], self.queued[n:]
            return taken

        def poll(self, timeout):
            calls.append(("poll", timeout))
            return FakeRdMessage(2, 1, b"first")

    consumer = ConfluentConsumer.__new__(ConfluentConsumer)
    consumer._consumer, consumer._held = Client(), None
    consumer._consumer.queued, queued = [], Client.queued
    chunk = consumer.poll(0.05, 100)  # nothing queued: wait for the first record only
    assert [m.value() for m in chunk.messages] == [b"first"]
    assert all(c[0] == "poll" or c[2] == 0 for c in calls)
    consumer._consumer.queued = queued
    chunk = consumer.poll(0.05, 100)
    assert chunk.values == [b"a", b"b", b"c"]
    assert chunk.last == {("in", 0): 6, ("in", 1): 9}
    assert all(c[0] == "poll" or c[2] == 0 for c in calls)


@pytest.mark.parametrize("reset", ["earliest", "latest"])
def test_kafka_python_resets_only_partitions_it_still_holds(reset):
    """A recreated topic noticed while a rebalance moves partitions (seen after a broker
    restarted empty): seeking a partition the client no longer holds, or none at all (which
    kafka-python reads as *every* assigned one), crashed the worker."""
    from kafka import TopicPartition

    from worker.kafka.kafka_python import KafkaPythonConsumer

    class Client:
        def __init__(self, held):
            self.held, self.seeks = held, []

        def assignment(self):
            return set(self.held)

        def seek_to_beginning(self, *tps):
            assert tps and set(tps) <= self.held, "kafka-python raises here"
            self.seeks.append(("beginning", sorted(tps)))

        def seek_to_end(self, *tps):
            assert tps and set(tps) <= self.held, "kafka-python raises here"
            self.seeks.append(("end", sorted(tps)))

    consumer = KafkaPythonConsumer.__new__(KafkaPythonConsumer)
    consumer._config = {"auto_offset_reset": reset}
    consumer._consumer = Client(set())
    consumer.reset_positions({("in", 0), ("in", 1)})  # nothing held: nothing to do
    consumer.reset_positions(set())
    assert consumer._consumer.seeks == []
    consumer._consumer = Client({TopicPartition("in", 1)})
    consumer.reset_positions({("in", 0), ("in", 1)})
    where = "beginning" if reset == "earliest" else "end"
    assert consumer._consumer.seeks == [(where, [TopicPartition("in", 1)])]


def test_confluent_resets_only_partitions_it_still_holds():
    import confluent_kafka as ck

    from worker.kafka.confluent import ConfluentConsumer

    class Client:
        seeks: list = []

        def assignment(self):
            return [ck.TopicPartition("in", 1)]

        def seek(self, tp):
            self.seeks.append((tp.topic, tp.partition, tp.offset))

    consumer = ConfluentConsumer.__new__(ConfluentConsumer)
    consumer._config = {"auto.offset.reset": "earliest"}
    consumer._consumer = Client()
    consumer.reset_positions({("in", 0), ("in", 1)})
    assert consumer._consumer.seeks == [("in", 1, ck.OFFSET_BEGINNING)]
