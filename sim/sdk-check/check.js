// Drives a running genesys-sim with the official Genesys JavaScript SDK
// (purecloud-platform-client-v2) and the `ws` WebSocket client. The SDK parses the simulator's
// answers into its own models, so a wrong path, status or shape shows up as an error here.
//
// Usage: SIM_BASE_URL=http://127.0.0.1:PORT node check.js
// Exits 0 when every check passes, 1 on the first mismatch.
'use strict';

const assert = require('node:assert/strict');
const pc = require('purecloud-platform-client-v2');
const WebSocket = require('ws');

const baseUrl = new URL(process.env.SIM_BASE_URL || 'http://127.0.0.1:8080');
const CLIENT_ID = process.env.SIM_CLIENT_ID || 'sim-client';
const CLIENT_SECRET = process.env.SIM_CLIENT_SECRET || 'sim-secret';

let step = 'start';
function check(name) {
  step = name;
  console.log(`- ${name}`);
}

function statusOf(err) {
  return err && (err.status || (err.response && err.response.status));
}

function configure(apiClient) {
  apiClient.setGateway({
    host: baseUrl.hostname,
    protocol: baseUrl.protocol.replace(':', ''),
    port: Number(baseUrl.port),
    path_params_login: '',
    path_params_api: '',
  });
}

async function main() {
  const client = pc.ApiClient.instance;
  configure(client);

  check('bad credentials are refused with 401');
  await assert.rejects(client.loginClientCredentialsGrant(CLIENT_ID, 'wrong-secret'), (err) => {
    assert.equal(statusOf(err), 401, `status ${statusOf(err)}`);
    return true;
  });

  check('client-credentials login');
  const auth = await client.loginClientCredentialsGrant(CLIENT_ID, CLIENT_SECRET);
  assert.ok(auth.accessToken, 'access token');
  assert.ok(auth.tokenExpiryTime > Date.now(), 'expiry in the future');

  const notifications = new pc.NotificationsApi();
  const routing = new pc.RoutingApi();
  const users = new pc.UsersApi();
  const conversations = new pc.ConversationsApi();

  check('create a notification channel');
  const channel = await notifications.postNotificationsChannels();
  assert.match(channel.id, /^streaming-0-/);
  assert.match(channel.connectUri, /^ws:\/\/127\.0\.0\.1:\d+\/channels\/streaming-0-/);
  assert.ok(!Number.isNaN(Date.parse(channel.expires)), `expires ${channel.expires}`);

  check('list queues (paged)');
  const queues = await routing.getRoutingQueues({ pageSize: 100, pageNumber: 1 });
  assert.ok(queues.entities.length > 0, 'some queues');
  assert.equal(queues.pageNumber, 1);
  assert.equal(queues.pageSize, 100);
  assert.ok(queues.total >= queues.entities.length);
  assert.ok(queues.pageCount >= 1);
  for (const q of queues.entities) {
    assert.ok(q.id && q.name && q.division && q.division.id && q.division.name, JSON.stringify(q));
  }

  check('list users (paged)');
  const userPage = await users.getUsers({ pageSize: 25, pageNumber: 1 });
  assert.ok(userPage.entities.length > 0);
  const user = userPage.entities[0];
  assert.ok(user.id && user.name && user.email && user.state, JSON.stringify(user));

  check('replace subscriptions (PUT, ignoreErrors)');
  const topics = queues.entities.slice(0, 20).map((q) => ({ id: `v2.routing.queues.${q.id}.conversations` }));
  const put = await notifications.putNotificationsChannelSubscriptions(channel.id, topics, { ignoreErrors: true });
  assert.equal(put.entities.length, topics.length);
  for (const t of put.entities) assert.equal(t.state, 'Permitted', JSON.stringify(t));

  check('an unknown topic is Rejected with a reason (ignoreErrors)');
  const withBad = topics.concat([{ id: 'v2.routing.queues.no-such-queue.conversations' }]);
  const put2 = await notifications.putNotificationsChannelSubscriptions(channel.id, withBad, { ignoreErrors: true });
  const rejected = put2.entities.find((t) => t.state === 'Rejected');
  assert.ok(rejected && rejected.rejectionReason, JSON.stringify(put2.entities.slice(-1)));

  check('without ignoreErrors the same request fails');
  await assert.rejects(notifications.putNotificationsChannelSubscriptions(channel.id, withBad), (err) => {
    assert.equal(statusOf(err), 400, `status ${statusOf(err)}`);
    return true;
  });

  check('add subscriptions (POST)');
  const userTopic = { id: `v2.users.${user.id}.conversations` };
  const post = await notifications.postNotificationsChannelSubscriptions(channel.id, [userTopic], { ignoreErrors: true });
  assert.equal(post.entities.length, topics.length + 1);

  check('list subscriptions (GET)');
  const subs = await notifications.getNotificationsChannelSubscriptions(channel.id);
  assert.deepEqual(subs.entities.map((t) => t.id).sort(), topics.concat([userTopic]).map((t) => t.id).sort());

  check('list channels (includechannels=token)');
  const channels = await notifications.getNotificationsChannels({ includechannels: 'token' });
  assert.ok(channels.entities.some((c) => c.id === channel.id && c.connectUri === channel.connectUri));

  check('HEAD channel: 200 for ours, 404 for an unknown one');
  // A HEAD answer has no body, and the SDK rejects with the body: ask for extended responses.
  client.setReturnExtendedResponses(true);
  const head = await notifications.headNotificationsChannel(channel.id);
  assert.equal(head.status, 200);
  await assert.rejects(notifications.headNotificationsChannel('streaming-0-unknown'), (err) => {
    assert.equal(statusOf(err), 404, `status ${statusOf(err)}`);
    return true;
  });
  client.setReturnExtendedResponses(false);

  check('available topics');
  const available = await notifications.getNotificationsAvailabletopics({ expand: ['requiresPermissions', 'transports'] });
  assert.ok(available.entities.some((t) => t.id === 'v2.routing.queues.{id}.conversations'));

  check('WebSocket: heartbeat, pong and a conversation event');
  const seen = await streamCheck(channel.connectUri, new Set(topics.concat([userTopic]).map((t) => t.id)));
  console.log(`  heartbeat ok, pong ok, event on ${seen.topicName} (conversation ${seen.eventBody.id})`);

  check('analytics conversation details query');
  const now = Date.now();
  const interval = `${new Date(now - 3600e3).toISOString()}/${new Date(now + 60e3).toISOString()}`;
  const details = await conversations.postAnalyticsConversationsDetailsQuery({
    interval,
    order: 'asc',
    orderBy: 'conversationStart',
    paging: { pageSize: 25, pageNumber: 1 },
  });
  assert.ok(details.totalHits >= 1, `totalHits ${details.totalHits}`);
  assert.ok(details.conversations[0].conversationId && details.conversations[0].participants.length > 0);

  check('delete subscriptions');
  await notifications.deleteNotificationsChannelSubscriptions(channel.id);
  const none = await notifications.getNotificationsChannelSubscriptions(channel.id);
  assert.equal(none.entities.length, 0);

  console.log('sdk-check: all checks passed');
}

// Connects with `ws`, waits for a heartbeat, answers a ping with a pong, and returns the first
// event on one of `topics` (the simulator must run with a non-zero --rate).
function streamCheck(connectUri, topics) {
  return new Promise((resolve, reject) => {
    const socket = new WebSocket(connectUri);
    let heartbeat = false;
    let pong = false;
    let event = null;
    const timer = setTimeout(() => {
      socket.terminate();
      reject(new Error(`stream timeout: heartbeat=${heartbeat} pong=${pong} event=${!!event}`));
    }, 30000);
    const finish = () => {
      if (heartbeat && pong && event) {
        clearTimeout(timer);
        socket.close();
        resolve(event);
      }
    };
    socket.on('open', () => socket.send(JSON.stringify({ message: 'ping' })));
    socket.on('message', (data, isBinary) => {
      try {
        assert.equal(isBinary, false, 'text frames only');
        const frame = JSON.parse(data.toString());
        if (frame.topicName === 'channel.metadata') {
          if (frame.eventBody.message === 'WebSocket Heartbeat') heartbeat = true;
          if (frame.eventBody.message === 'pong') pong = true;
        } else if (topics.has(frame.topicName)) {
          assert.equal(frame.version, '2');
          assert.ok(frame.metadata && frame.metadata.CorrelationId, 'CorrelationId');
          assert.ok(frame.eventBody.id && Array.isArray(frame.eventBody.participants));
          event = event || frame;
        } else {
          throw new Error(`frame on an unsubscribed topic: ${frame.topicName}`);
        }
        finish();
      } catch (err) {
        clearTimeout(timer);
        socket.terminate();
        reject(err);
      }
    });
    socket.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
}

main().catch((err) => {
  const status = statusOf(err);
  const body = err && (err.body || (err.response && err.response.data));
  console.error(`sdk-check FAILED at step "${step}": ${err && (err.stack || err.message || err)}`);
  if (status) console.error(`  HTTP ${status} ${JSON.stringify(body)}`);
  process.exit(1);
});
