"""I/O only: the asyncio adaptor per socket and the listeners built from the config. The MQTT
rules are in `cymqtt.protocol`; this package moves bytes and reports what the socket does."""
