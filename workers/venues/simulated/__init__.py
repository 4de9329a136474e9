"""The paper simulator: a broker whose book lives in NATS KV, and its quote model."""
