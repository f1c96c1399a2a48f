// The node system's publisher: @socket.io/redis-emitter, as a Node backend job emits to
// a room of the Socket.IO servers on the Redis adapter.
//
// `node bench/node/emitter.mjs TOPIC DATA_JSON`, GATEWAY_REDIS_URL in the environment.
// Prints `{"ready": true}` once connected to Redis. Then each line read from stdin is one
// batch, a JSON list of [user, seq]; for each pair it emits
// `emitter.to("<TOPIC>_<user>").emit(TOPIC, {topic, user_id, seq, ts, data})`, `ts`
// stamped (seconds since the epoch) just before that emit, and answers one line once
// Redis has taken the whole batch: `{"ok": true}`, or `{"error": "..."}`. node-redis
// writes the batch's PUBLISH commands in one go, so a batch is one round trip, like the
// baseline's pipeline. The pacing is the caller's (bench/publish.py).
//
// While Redis is away a batch fails at once (no offline queue; node-redis reconnects
// meanwhile), as a pipeline does for the other publishers.
//
// It exits when stdin closes (the kernel closes it when the parent ends, however it
// ends), and ignores SIGINT: Ctrl-C is for the parent, which then stops it.

import process from "node:process";
import { createInterface } from "node:readline";
import { setImmediate as nextTurn } from "node:timers/promises";

import { Emitter } from "@socket.io/redis-emitter";
import { createClient } from "redis";

// Milliseconds to connect to Redis before giving up.
const CONNECT_MS = 10_000;
// Milliseconds between two re-anchorings of the wall clock (see WallClock).
const ANCHOR_MS = 1_000;
// Milliseconds a batch still in flight may take once stdin closed, before the process leaves anyway.
const LEAVE_MS = 2_000;

// Wall-clock time with sub-millisecond resolution, as Python's time.time() that the
// other publishers stamp with and the load generator reads.
//
// Date.now() counts whole milliseconds, too coarse for latencies of a few ms; the
// monotonic performance.now() is fine-grained but drifts from the wall clock if NTP
// slews it. So the monotonic clock is anchored to the wall clock at a millisecond edge
// of Date.now() (a spin of 1 ms at most), again every ANCHOR_MS.
class WallClock {
  constructor() {
    this.offset = 0;
    this.anchoredAt = -Infinity;
  }

  anchor() {
    const start = Date.now();
    let wall = start;
    while (wall === start) {
      wall = Date.now();
    }
    const mono = performance.now();
    this.offset = wall - mono;
    this.anchoredAt = mono;
  }

  seconds() {
    const mono = performance.now();
    if (mono - this.anchoredAt > ANCHOR_MS) {
      this.anchor();
      return (this.offset + performance.now()) / 1000;
    }
    return (this.offset + mono) / 1000;
  }
}

function reply(answer) {
  process.stdout.write(`${JSON.stringify(answer)}\n`);
}

async function connect(url) {
  const client = createClient({ url, disableOfflineQueue: true });
  client.on("error", (error) => process.stderr.write(`emitter: redis: ${error.message}\n`));
  const timer = setTimeout(() => {
    process.stderr.write(`emitter: no connection to Redis within ${CONNECT_MS} ms\n`);
    process.exit(1);
  }, CONNECT_MS);
  await client.connect();
  clearTimeout(timer);
  return client;
}

// The emitter lets go of its PUBLISH promises: the last one that failed, for the batch to report.
let failedPublish = null;

async function publish(emitter, client, clock, topic, data, batch) {
  failedPublish = null;
  for (const [user, seq] of batch) {
    const update = { topic, user_id: user, seq, ts: clock.seconds(), data };
    emitter.to(`${topic}_${user}`).emit(topic, update);
  }
  try {
    // A PING behind the batch on the same connection answers once Redis has taken every PUBLISH of it.
    await client.ping();
  } finally {
    await nextTurn(); // by then a PUBLISH of the batch that failed has been reported
  }
  if (failedPublish !== null) {
    throw failedPublish;
  }
}

async function main() {
  const [topic, dataJson] = process.argv.slice(2);
  const data = JSON.parse(dataJson);
  process.on("SIGINT", () => {});
  process.on("unhandledRejection", (error) => {
    failedPublish = error;
  });
  const client = await connect(process.env.GATEWAY_REDIS_URL);
  const emitter = new Emitter(client);
  const clock = new WallClock();
  clock.anchor();
  reply({ ready: true });
  const lines = createInterface({ input: process.stdin, crlfDelay: Infinity });
  lines.once("close", () => setTimeout(() => process.exit(0), LEAVE_MS).unref());
  for await (const line of lines) {
    try {
      await publish(emitter, client, clock, topic, data, JSON.parse(line));
      reply({ ok: true });
    } catch (error) {
      reply({ error: `${error.name}: ${error.message}` });
    }
  }
  await client.quit();
}

main().catch((error) => {
  process.stderr.write(`emitter: ${error.stack}\n`);
  process.exit(1);
});
