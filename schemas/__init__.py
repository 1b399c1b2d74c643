"""The Avro schemas of kingdee-cdc (single copy; shipped inside the package as ``connector.schemas``)."""
