"""Sources: APIs pulled into Kafka. `peopleai.activities` (People.ai export jobs) is the one so far."""
