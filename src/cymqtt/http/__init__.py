"""The HTTP side of the broker: a REST API under `/api/v1/`, Prometheus metrics at `/metrics`
and a live dashboard at `/`, served by aiohttp on the broker's own event loop.

It reads and acts on the broker through the `Broker` facade only (`stats()`, `client_ids()`,
`client()`, `subscriptions()`, `retained_topics()`, `publish()`, `disconnect()`, ...), and
only when a request asks: nothing here runs per MQTT message, and a page of a listing builds
the dicts of that page alone.

- `server.py`: `HttpServer` (bind, stop, the middlewares: bearer token, JSON errors, headers)
- `errors.py`: `BindError` (a port in use, say), importable without aiohttp
- `api.py`: the endpoints, declared once in a table that both routes them and describes them
- `openapi.py`: the OpenAPI 3 document built from that table
- `params.py`: query and body checking, pagination, `ApiError`
- `prometheus.py`: the collector `/metrics` runs at scrape time
- `static/`: the dashboard (HTML, CSS, JavaScript; no build step, nothing from the network)

Nothing is imported here: aiohttp costs about 0.3 s to import, which only a broker that
serves HTTP pays (broker.py imports `cymqtt.http.server` when `[http]` is configured).
"""
