"""The webhook receiver: verify -> durable outbox -> Prefect events."""
