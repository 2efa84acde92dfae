"""Sans-I/O MQTT, one `ClientProtocol` per connection: bytes in, bytes and close intents out.

Imports neither asyncio nor socket nor ssl (a test checks): a TCP, TLS or WebSocket connection
drives the same object, and handler tests need nothing but bytes.
"""
