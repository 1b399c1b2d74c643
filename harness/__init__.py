"""The development harness: everything the repository needs to run kingdee-cdc for real on one machine, and
nothing the product needs at run time (docs/decisions/0006).

* ``devstack`` — Apache Kafka (KRaft, jars from Maven Central) and embedded PostgreSQL on loopback;
* ``debezium`` — sample business databases and Kafka Connect with the real Debezium PostgreSQL connector;
* ``samples`` — realistic business change events of the five sample systems as Debezium envelopes;
* ``demo`` — the whole chain on embedded defaults, with a report that ties the books (``make demo``).

Run it with ``python -m harness`` (``demo``, ``dev up|down|status``). It is not part of the ``kingdee-cdc``
wheel or image and may use the repository's own paths (``REPO_ROOT``).
"""
