"""Activity Connector: Kafka activity events to SaaS bulk-import APIs."""

__version__ = "0.1.0"
