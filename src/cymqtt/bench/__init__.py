"""cymqtt-bench: an MQTT load generator (connections, throughput, latency, loss).

Run it as `cymqtt-bench` or `python -m cymqtt.bench`; see cli.py for the commands.
"""
