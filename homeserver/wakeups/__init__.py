"""Wake-ups: the bus (in-process, or shared by workers) and the notifier that wakes waiting
/sync requests and WebSockets. A wake-up carries positions, never event data."""
