// The official Socket.IO JavaScript client against the gateway, driven by
// tests/integration/test_js_client.py:
//
//   node client.mjs URL TOKEN EXPECTED_COUNT TOPIC...
//
// TOKEN "" connects without a token. Every line on stdout is one JSON object:
//   {"event": "ack", "data": ack}                         the subscribe ack
//   {"event": "update", "topic": t, "data": payload}      every event received
//   {"event": "connect_error", "message": m, "data": d}   refused; exit 0
//   {"event": "ack_error", "message": m}                  no ack in time; exit 3
//   {"event": "disconnect", "reason": r}                  dropped early; exit 3
// After EXPECTED_COUNT updates it disconnects and exits 0. A hard timer makes
// it exit 2 after HARD_LIMIT_MS whatever happens, so it can never hang.

import { io } from "socket.io-client";

const HARD_LIMIT_MS = 20000;
const ACK_TIMEOUT_MS = 10000;

const [url, token, expected, ...topics] = process.argv.slice(2);
const expectedCount = Number.parseInt(expected, 10);

function line(record) {
  process.stdout.write(JSON.stringify(record) + "\n");
}

function finish(code) {
  // An empty write's callback runs once everything before it is flushed.
  process.stdout.write("", () => process.exit(code));
}

if (!url || token === undefined || !Number.isInteger(expectedCount) || topics.length === 0) {
  process.stderr.write("usage: node client.mjs URL TOKEN EXPECTED_COUNT TOPIC...\n");
  process.exit(64);
}

setTimeout(() => process.exit(2), HARD_LIMIT_MS);

const socket = io(url, {
  transports: ["websocket"],
  auth: token ? { token } : {},
  reconnection: false,
  timeout: 10000,
});
let received = 0;
let done = false;

socket.on("connect", async () => {
  try {
    const ack = await socket.timeout(ACK_TIMEOUT_MS).emitWithAck("subscribe", { topics });
    line({ event: "ack", data: ack });
  } catch (err) {
    line({ event: "ack_error", message: err.message });
    finish(3);
  }
});

// Every event, not only the subscribed topics': anything else is a leak the
// test must see.
socket.onAny((topic, payload) => {
  if (done) return;
  line({ event: "update", topic, data: payload });
  received += 1;
  if (received >= expectedCount) {
    done = true;
    socket.disconnect();
    finish(0);
  }
});

socket.on("connect_error", (err) => {
  line({ event: "connect_error", message: err.message, data: err.data });
  finish(0);
});

socket.on("disconnect", (reason) => {
  if (done) return;
  line({ event: "disconnect", reason });
  finish(3);
});
