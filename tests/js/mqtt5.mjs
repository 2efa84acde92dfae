// MQTT.js v5 scenarios against a running cymqtt broker, run by tests/test_13_mqttjs.py.
//
//   node mqtt5.mjs <port> <scenario>
//
// Prints one line of JSON with what the clients saw ({"ok": true, ...}) and exits 0, or prints
// {"ok": false, "error": ...} and exits 1. Every scenario is bounded by a hard deadline, so a
// broker that never answers cannot hang the test run.
import mqtt from 'mqtt'

const [, , portArg, scenario] = process.argv
const port = Number(portArg)
const DEADLINE_MS = 15000
const clients = []

function finish (result, code) {
  process.stdout.write(JSON.stringify(result) + '\n')
  for (const c of clients) c.end(true)
  // Let stdout drain, then leave whatever sockets are still open.
  setTimeout(() => process.exit(code), 50)
}

const timer = setTimeout(() => finish({ ok: false, error: `scenario ${scenario} timed out` }, 1),
  DEADLINE_MS)

async function connect (clientId, extra = {}) {
  const client = await mqtt.connectAsync(`mqtt://127.0.0.1:${port}`, {
    protocolVersion: 5,
    clientId,
    clean: true,
    reconnectPeriod: 0,
    connectTimeout: 5000,
    ...extra
  })
  clients.push(client)
  return client
}

// Resolves with the first `n` messages a client receives (topic as delivered to the
// application, plus the wire-level topic and properties MQTT.js decoded).
function collect (client, n) {
  const got = []
  return new Promise((resolve) => {
    client.on('message', (topic, payload, packet) => {
      got.push({
        topic,
        wire_topic: packet.topic.toString(),
        payload: payload.toString(),
        qos: packet.qos,
        retain: packet.retain,
        properties: packet.properties ? normalise(packet.properties) : {}
      })
      if (got.length === n) resolve(got)
    })
  })
}

function normalise (props) {
  const out = {}
  for (const [k, v] of Object.entries(props)) {
    if (Buffer.isBuffer(v)) out[k] = { hex: v.toString('hex') }
    else if (k === 'subscriptionIdentifier') out[k] = [].concat(v)
    else out[k] = v
  }
  return out
}

const scenarios = {
  // CONNECT/CONNACK in v5, SUBSCRIBE with subscription identifiers, PUBLISH with user properties
  // (a repeated key included), content type, payload format indicator and message expiry.
  async basic () {
    const sub = await connect('js-basic-sub')
    const pub = await connect('js-basic-pub')
    await sub.subscribeAsync('js/basic/#', { qos: 1, properties: { subscriptionIdentifier: 7 } })
    await sub.subscribeAsync('js/basic/+/x', { qos: 1, properties: { subscriptionIdentifier: 268435455 } })
    await sub.subscribeAsync('js/basic/plain', { qos: 0 })
    const messages = collect(sub, 2)
    await pub.publishAsync('js/basic/a/x', 'hello', {
      qos: 1,
      properties: {
        userProperties: { region: 'eu', tag: ['first', 'second'] },
        contentType: 'text/plain',
        payloadFormatIndicator: true,
        messageExpiryInterval: 120
      }
    })
    await pub.publishAsync('js/basic/plain', 'no ids', { qos: 0 })
    return { connack: normalise(sub.connackPacket?.properties ?? {}), messages: await messages }
  },

  // The client names topics by alias: first with topic + alias, then empty topic + alias; then
  // MQTT.js assigns aliases itself (autoAssignTopicAlias). The subscriber announces a topic alias
  // maximum, so the broker may alias what it sends; MQTT.js resolves those transparently.
  async alias () {
    const sub = await connect('js-alias-sub', { properties: { topicAliasMaximum: 10 } })
    const pub = await connect('js-alias-pub')
    const auto = await connect('js-alias-auto', { autoAssignTopicAlias: true })
    await sub.subscribeAsync('js/alias/#', { qos: 1 })
    const messages = collect(sub, 6)
    await pub.publishAsync('js/alias/t', 'one', { qos: 1, properties: { topicAlias: 1 } })
    await pub.publishAsync('', 'two', { qos: 1, properties: { topicAlias: 1 } })
    await pub.publishAsync('js/alias/u', 'three', { qos: 1, properties: { topicAlias: 1 } })
    await pub.publishAsync('', 'four', { qos: 1, properties: { topicAlias: 1 } })
    await auto.publishAsync('js/alias/auto', 'five', { qos: 1 })
    await auto.publishAsync('js/alias/auto', 'six', { qos: 1 })
    return {
      broker_topic_alias_maximum: pub.connackPacket?.properties?.topicAliasMaximum ?? null,
      messages: await messages
    }
  },

  // Request/response: the requester asks for response information in CONNACK and builds its
  // response topic from it; the responder answers on the request's response topic with the
  // request's correlation data.
  async reqres () {
    const requester = await connect('js-requester', { properties: { requestResponseInformation: true } })
    const responder = await connect('js-responder')
    const info = requester.connackPacket?.properties?.responseInformation ?? null
    if (!info) throw new Error('no response information in CONNACK')
    const responseTopic = info + 'answer'
    await responder.subscribeAsync('js/service/request', { qos: 1 })
    responder.on('message', (topic, payload, packet) => {
      const p = packet.properties || {}
      responder.publish(p.responseTopic, 'answer to ' + payload.toString(), {
        qos: 1,
        properties: { correlationData: p.correlationData, userProperties: { status: 'ok' } }
      })
    })
    await requester.subscribeAsync(responseTopic, { qos: 1 })
    const replies = collect(requester, 2)
    for (const [id, body] of [['c0ffee01', 'ping'], ['c0ffee02', 'pong']]) {
      await requester.publishAsync('js/service/request', body, {
        qos: 1,
        properties: { responseTopic, correlationData: Buffer.from(id, 'hex') }
      })
    }
    return { response_information: info, response_topic: responseTopic, replies: await replies }
  }
}

const run = scenarios[scenario]
if (!run || !Number.isInteger(port)) {
  finish({ ok: false, error: `usage: node mqtt5.mjs <port> <${Object.keys(scenarios).join('|')}>` }, 1)
} else {
  run().then(
    (result) => { clearTimeout(timer); finish({ ok: true, ...result }, 0) },
    (err) => { clearTimeout(timer); finish({ ok: false, error: String(err?.stack || err) }, 1) }
  )
}
