"""Payment intents other than charge: their sans-I/O rules."""
