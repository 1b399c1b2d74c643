"""kingdee-cdc: Debezium change events → balanced Kingdee K/3 Cloud vouchers, exactly once.

The package is cut by domain (see ``docs/design.md``): ``events`` decodes bytes into typed change
events, ``mapping`` and ``ledger`` turn them into vouchers and check them, ``journal`` records outcomes
in PostgreSQL, ``kingdee`` talks to K/3 Cloud, ``devstack`` runs real Kafka and PostgreSQL on loopback.
"""

from typing import Final

__version__: Final = "0.1.0"
