"""Getting the outputs out and the offsets committed, under the chosen processing guarantee.

Owns: sending alerts and dead letters and keeping what the broker refused (``outputs``);
the commit protocol, one committer per guarantee chosen once by :mod:`worker.app`
(``checkpoint``: at-least-once; ``transactions``: exactly-once); what to do with a record
batch the client cannot decode (``undecodable``). One exception root:
:class:`~worker.delivery.exceptions.DeliveryError`.

May import: :mod:`worker.contract`, :mod:`worker.core`, :mod:`worker.kafka` (ports and the
broker link), :mod:`worker.observe`, :mod:`worker.exceptions`.
"""
