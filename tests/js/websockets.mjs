// MQTT.js over WebSocket against a running cymqtt broker, run by tests/test_27_websockets.py.
//
//   node websockets.mjs <subscriber url> <publisher url> <protocol version>
//
// URLs are ws://, wss:// or mqtt:// (a wss:// CA comes from NODE_EXTRA_CA_CERTS). The subscriber
// subscribes to ws/js/#, the publisher sends QoS 0, 1 and 2 messages and one of 200 KB (more
// than one WebSocket frame's 64 KiB length field); prints one line of JSON with what the
// subscriber received ({"ok": true, ...}) and exits 0, or {"ok": false, "error": ...} and 1.
import mqtt from 'mqtt'

const [, , subUrl, pubUrl, versionArg] = process.argv
const protocolVersion = Number(versionArg)
const clients = []

function finish (result, code) {
  process.stdout.write(JSON.stringify(result) + '\n')
  for (const c of clients) c.end(true)
  setTimeout(() => process.exit(code), 50)
}

setTimeout(() => finish({ ok: false, error: 'timed out' }, 1), 15000)

async function connect (url, clientId) {
  const client = await mqtt.connectAsync(url, {
    protocolVersion, clientId, clean: true, reconnectPeriod: 0, connectTimeout: 5000
  })
  clients.push(client)
  return client
}

try {
  const sub = await connect(subUrl, `js-sub-${protocolVersion}`)
  const pub = await connect(pubUrl, `js-pub-${protocolVersion}`)
  const big = Buffer.alloc(200 * 1024, 0x61)
  const got = []
  const done = new Promise((resolve) => {
    sub.on('message', (topic, payload, packet) => {
      got.push({ topic, qos: packet.qos, size: payload.length,
                 payload: payload.length > 64 ? `${payload.length} bytes` : payload.toString(),
                 intact: payload.length !== big.length || payload.equals(big) })
      if (got.length === 4) resolve()
    })
  })
  await sub.subscribeAsync('ws/js/#', { qos: 2 })
  await pub.publishAsync('ws/js/q0', 'zero', { qos: 0 })
  await pub.publishAsync('ws/js/q1', 'one', { qos: 1 })
  await pub.publishAsync('ws/js/q2', 'two', { qos: 2 })
  await pub.publishAsync('ws/js/big', big, { qos: 1 })
  await done
  finish({ ok: true, messages: got }, 0)
} catch (err) {
  finish({ ok: false, error: String(err && err.stack ? err.stack : err) }, 1)
}
