// A browser or Node client that never misses or repeats an update.
//
//   node resuming-client.mjs URL TOKEN|@TOKEN_FILE [SECONDS] [TOPIC...]
//
// It keeps the last seq per topic and, on every (re)connect, subscribes with
// `since`, so the gateway first sends what was missed (or the latest update
// as a snapshot when its history no longer reaches back). An update whose seq
// is not above the last one is a repeat and is dropped, except seq 1, which
// starts a new count (the gateway's Redis lost its data).
//
// socket.io-client reconnects by itself after a network loss or a gateway
// restart ("transport close"); a fresh token is read from `auth` each time.
//
// A connection lives no longer than its token. With @TOKEN_FILE the token is
// read again whenever one is needed (a sidecar keeps the file fresh): on
// `token_expiring` the client sends `refresh` with it, and if the gateway
// still ends the session because the token ran out ("io server disconnect"
// after a warning), it connects again with the new token and resumes. After
// a kick (no warning first) it stays disconnected.
//
// Prints one JSON line per update, per subscribe ack and per refresh ack.

import { readFileSync } from "node:fs";
import { io } from "socket.io-client";

const [url, token, seconds = "0", ...named] = process.argv.slice(2);
const topics = named.length ? named : ["balance", "positions", "pnl", "orders"];
if (!url || !token) {
  process.stderr.write("usage: node resuming-client.mjs URL TOKEN [SECONDS] [TOPIC...]\n");
  process.exit(64);
}

const last = {}; // topic -> last seq applied
const currentToken = () => (token.startsWith("@") ? readFileSync(token.slice(1), "utf8").trim() : token);
let expiring = false; // warned that the token runs out, and not refreshed since

const socket = io(url, {
  transports: ["websocket"], // several gateway workers: WebSocket only
  auth: (send) => send({ token: currentToken() }), // called on every (re)connect
  reconnectionDelay: 200,
  reconnectionDelayMax: 5000,
});

async function subscribe() {
  const ack = await socket.timeout(10000).emitWithAck("subscribe", { topics, since: { ...last } });
  process.stdout.write(JSON.stringify({ ack }) + "\n");
  if (!ack.ok && ack.error === "unavailable" && socket.connected) {
    setTimeout(subscribe, 1000); // the gateway's Redis is away: try again shortly
  }
}

socket.on("connect", () => subscribe().catch(() => socket.disconnect().connect()));

socket.on("token_expiring", async () => {
  expiring = true;
  const ack = await socket.timeout(10000).emitWithAck("refresh", { token: currentToken() }).catch(() => ({ ok: false }));
  process.stdout.write(JSON.stringify({ refresh: ack }) + "\n");
  if (ack.ok) expiring = false;
});

socket.on("disconnect", (reason) => {
  if (reason === "io server disconnect" && expiring) { // the token ran out: a new one, and resume
    expiring = false;
    socket.connect();
  }
});

for (const topic of topics) {
  socket.on(topic, (update) => {
    const seq = update.seq;
    if (!(update.snapshot || seq > (last[topic] ?? 0) || seq === 1)) return; // a repeat
    last[topic] = seq;
    process.stdout.write(JSON.stringify({ topic, seq, snapshot: !!update.snapshot, data: update.data }) + "\n");
  });
}

socket.on("connect_error", (err) => {
  if (err.message === "unauthorized") {
    process.stderr.write(`refused: ${err.data?.reason}\n`); // expired_token: get a new one
    process.exit(1);
  }
});

if (Number(seconds) > 0) {
  setTimeout(() => { socket.disconnect(); process.exit(0); }, Number(seconds) * 1000);
}
