"""The Kafka data plane: the only part of poold that talks to Kafka."""
