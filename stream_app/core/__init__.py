"""Pure logic, no I/O: the event contract, interest math and state codec, collaborative counters, ranking."""
