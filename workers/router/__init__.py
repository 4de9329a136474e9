"""The router: validates intents, picks a broker, publishes route decisions."""
