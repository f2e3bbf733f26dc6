// The Node.js baseline of the benchmark: the LAST pattern of /work/shared/seed/user-question.md
// ("a non-blocking queue pattern"), reproduced faithfully:
//   - `ws` + `kafkajs`, one producer connected once per (re)start, kafkajs defaults otherwise;
//   - every frame JSON.parse'd in the 'message' handler and pushed to an in-memory array;
//   - an async loop drains it with one awaited `producer.send` per message (re-queue + break on
//     failure; the loop restarts on the next message);
//   - protocol pings answered with pongs (`ws.on('ping')`), nothing else about liveness;
//   - 5 s after 'close' the whole function runs again (the earlier answers' `setTimeout(start, 5000)`).
//
// Corrected, only so that it can run at all (the seed's endpoints and subscribe messages do not
// exist): an access token from POST /oauth/token (client credentials, Basic auth), a channel from
// POST /api/v2/notifications/channels and the topics subscribed with
// PUT /api/v2/notifications/channels/{id}/subscriptions, then the socket opened on connectUri.
//
// Everything is configured from the environment by the harness (bench/run.py):
//   GENESYS_API_URL      the simulator's REST base URL (login and API)
//   GENESYS_CLIENT_ID / GENESYS_CLIENT_SECRET
//   GENESYS_TOPICS       comma-separated Genesys topics to subscribe (the same as the bridge's)
//   KAFKA_BROKERS        e.g. 127.0.0.1:9092
//   KAFKA_TOPIC          the Kafka topic every event goes to
const WebSocket = require('ws');
const { Kafka } = require('kafkajs');

const API = process.env.GENESYS_API_URL;
const CLIENT_ID = process.env.GENESYS_CLIENT_ID;
const CLIENT_SECRET = process.env.GENESYS_CLIENT_SECRET;
const TOPICS = (process.env.GENESYS_TOPICS || '').split(',').filter(Boolean);
const BROKERS = (process.env.KAFKA_BROKERS || 'localhost:9092').split(',');
const KAFKA_TOPIC = process.env.KAFKA_TOPIC || 'gc-conversations';

const kafka = new Kafka({ clientId: 'gc-analytics-consumer', brokers: BROKERS });
const producer = kafka.producer();

// --- the correction: the real Notification API flow -------------------------------------------
async function getToken() {
  const basic = Buffer.from(`${CLIENT_ID}:${CLIENT_SECRET}`).toString('base64');
  const res = await fetch(`${API}/oauth/token`, {
    method: 'POST',
    headers: {
      Authorization: `Basic ${basic}`,
      'Content-Type': 'application/x-www-form-urlencoded',
    },
    body: 'grant_type=client_credentials',
  });
  if (!res.ok) throw new Error(`token: HTTP ${res.status} ${await res.text()}`);
  return (await res.json()).access_token;
}

async function createChannelAndSubscribe(token) {
  const auth = { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' };
  const created = await fetch(`${API}/api/v2/notifications/channels`, { method: 'POST', headers: auth });
  if (!created.ok) throw new Error(`channel: HTTP ${created.status} ${await created.text()}`);
  const channel = await created.json();
  const subscribed = await fetch(
    `${API}/api/v2/notifications/channels/${channel.id}/subscriptions?ignoreErrors=true`,
    { method: 'PUT', headers: auth, body: JSON.stringify(TOPICS.map((id) => ({ id }))) },
  );
  if (!subscribed.ok) throw new Error(`subscribe: HTTP ${subscribed.status} ${await subscribed.text()}`);
  console.log(`channel ${channel.id} subscribed to ${TOPICS.length} topics`);
  return channel;
}
// ------------------------------------------------------------------------------------------------

async function processAnalyticsStream() {
  await producer.connect();

  const token = await getToken();
  const channel = await createChannelAndSubscribe(token);
  const ws = new WebSocket(channel.connectUri, {
    headers: { Authorization: `Bearer ${token}` },
  });

  const eventQueue = [];
  let isProcessing = false;

  ws.on('open', () => console.log('Connected to Analytics Stream'));

  ws.on('message', (data) => {
    eventQueue.push(JSON.parse(data));
    processQueue();
  });

  // Explicit ping/pong handling to prevent GC timeout
  ws.on('ping', (data) => ws.pong(data));

  ws.on('close', (code, reason) => {
    console.log(`WebSocket closed: ${code} - ${reason}. Reconnecting in 5s...`);
    setTimeout(processAnalyticsStream, 5000);
  });

  async function processQueue() {
    if (isProcessing) return;
    isProcessing = true;

    while (eventQueue.length > 0) {
      const event = eventQueue.shift();
      try {
        // Async send prevents blocking the WebSocket event loop
        await producer.send({
          topic: KAFKA_TOPIC,
          messages: [{ value: JSON.stringify(event) }],
        });
      } catch (err) {
        console.error('Kafka send failed:', err);
        eventQueue.unshift(event); // Re-queue on failure
        break;
      }
    }

    isProcessing = false;
  }
}

processAnalyticsStream();
