// The benchmark's third system: a Socket.IO 4 server on @socket.io/redis-adapter,
// written the way the Socket.IO documentation says to, as bench/baseline.py is for
// Flask-SocketIO.
//
// - the same GATEWAY_* environment as the gateway and the baseline: GATEWAY_BIND
//   (host:port, 127.0.0.1:8000 by default), GATEWAY_REDIS_URL, GATEWAY_JWT_SECRET,
//   GATEWAY_WORKERS;
// - a JWT in the handshake's auth.token, HS256 with the shared secret, `sub` and
//   `exp` required; anything else is refused with "unauthorized";
// - a `subscribe` event that joins `<topic>_<user>` for each known topic and acks
//   {"ok": true, "topics": [...]}, or {"ok": false, "error": "invalid_topics"};
// - WebSocket only, GET /healthz answers 200;
// - the Redis adapter, so that a @socket.io/redis-emitter anywhere reaches the rooms;
// - the two tips of the Socket.IO docs (performance tuning, memory usage): ws's
//   bufferutil add-on (an optional dependency) and the first HTTP request discarded.
//
// Processes: Node's cluster module, one primary and GATEWAY_WORKERS workers, each a
// Socket.IO server of its own on the adapter. The primary accepts each connection and
// hands it to the next worker in turn (Node's default on Linux, SCHED_RR), so that the
// workers share the clients evenly; from then on the connection is the worker's alone.
// A worker that dies is replaced, as gunicorn does. SIGTERM or SIGINT stops the
// workers (every connection closed), then the primary.
//
// Start (as bench/systems.py does): `node bench/node/server.mjs`, logging to stdout.

import cluster from "node:cluster";
import { createServer } from "node:http";
import process from "node:process";

import { createAdapter } from "@socket.io/redis-adapter";
import jwt from "jsonwebtoken";
import { createClient } from "redis";
import { Server } from "socket.io";

// The topics a client may subscribe to (bench/baseline.py's TOPICS).
const TOPICS = new Set(["balance", "positions", "pnl", "orders"]);
// Milliseconds a worker has to close its connections and leave, and the primary to see them go.
const STOP_MS = 20_000;
// What the bench waits for in this log, once per worker.
const LISTENING = "worker listening on";
// The exit code of a worker that could not start (gunicorn's WORKER_BOOT_ERROR): the primary gives up.
const BOOT_ERROR = 3;

function log(level, message) {
  const role = cluster.isPrimary ? "primary" : "worker";
  console.log(`${new Date().toISOString()} [${process.pid}] ${role} ${level} ${message}`);
}

function readConfig(env) {
  const bind = env.GATEWAY_BIND || "127.0.0.1:8000";
  const colon = bind.lastIndexOf(":");
  const config = {
    host: bind.slice(0, colon),
    port: Number(bind.slice(colon + 1)),
    redisUrl: env.GATEWAY_REDIS_URL,
    secret: env.GATEWAY_JWT_SECRET,
    workers: Number(env.GATEWAY_WORKERS || "1"),
  };
  const problems = [
    colon < 1 || !Number.isInteger(config.port) ? `GATEWAY_BIND: ${bind}: expected host:port` : "",
    config.redisUrl ? "" : "GATEWAY_REDIS_URL: not set",
    config.secret ? "" : "GATEWAY_JWT_SECRET: not set",
    Number.isInteger(config.workers) && config.workers >= 1 ? "" : "GATEWAY_WORKERS: expected a whole number >= 1",
  ].filter(Boolean);
  if (problems.length) {
    throw new Error(problems.join("; "));
  }
  return config;
}

// --- the primary: forks the workers, replaces one that dies, stops them all.

function primary(config) {
  const live = new Set();
  let stopping = false;
  const fork = () => live.add(cluster.fork());
  log("INFO", `starting ${config.workers} workers on ${config.host}:${config.port}`);
  for (let i = 0; i < config.workers; i += 1) {
    fork();
  }
  cluster.on("exit", (worker, code, signal) => {
    live.delete(worker);
    if (code === BOOT_ERROR && !stopping) {
      log("ERROR", `worker ${worker.process.pid} could not start; stopping`);
      stop("boot error");
      process.exitCode = BOOT_ERROR;
    } else if (!stopping) {
      log("ERROR", `worker ${worker.process.pid} exited (code ${code}, signal ${signal}); starting another`);
      fork();
    }
    if (stopping && live.size === 0) {
      log("INFO", "every worker stopped");
      process.exit();
    }
  });
  const stop = (signal) => {
    if (stopping) {
      return;
    }
    stopping = true;
    log("INFO", `${signal}: stopping ${live.size} workers`);
    for (const worker of live) {
      worker.process.kill("SIGTERM");
    }
    setTimeout(() => {
      log("ERROR", `${live.size} workers still running after ${STOP_MS} ms; killing them`);
      for (const worker of live) {
        worker.process.kill("SIGKILL");
      }
      process.exit(1);
    }, STOP_MS + 1000).unref();
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

// --- a worker: one Socket.IO server on the Redis adapter.

// Socket.IO middleware: the handshake's auth.token must be a valid HS256 JWT with sub and exp.
function authenticate(secret) {
  return (socket, next) => {
    const token = socket.handshake.auth?.token;
    try {
      const claims = jwt.verify(typeof token === "string" ? token : "", secret, { algorithms: ["HS256"] });
      if (claims.sub === undefined || claims.exp === undefined) {
        throw new jwt.JsonWebTokenError("sub and exp are required");
      }
      socket.data.user = String(claims.sub);
      next();
    } catch (error) {
      if (!(error instanceof jwt.JsonWebTokenError)) {
        throw error;
      }
      next(new Error("unauthorized"));
    }
  };
}

// The `subscribe` event: join `<topic>_<user>` for each known topic; ack as the baseline does.
function onSubscribe(socket) {
  return (payload, ack) => {
    const topics = payload !== null && typeof payload === "object" ? payload.topics : undefined;
    let answer;
    if (!Array.isArray(topics)) {
      answer = { ok: false, error: "invalid_topics" };
    } else {
      const joined = topics.filter((topic) => TOPICS.has(topic));
      socket.join(joined.map((topic) => `${topic}_${socket.data.user}`));
      answer = { ok: true, topics: joined };
    }
    if (typeof ack === "function") {
      ack(answer);
    }
  };
}

function healthz(request, response) {
  const ok = request.method === "GET" && request.url === "/healthz";
  response.writeHead(ok ? 200 : 404, { "content-type": "text/plain" });
  response.end(ok ? "ok\n" : "not found\n");
}

async function redisClients(url) {
  const pub = createClient({ url });
  const sub = pub.duplicate();
  for (const [name, client] of [["pub", pub], ["sub", sub]]) {
    client.on("error", (error) => log("ERROR", `redis ${name}: ${error.message}`));
  }
  await Promise.all([pub.connect(), sub.connect()]);
  return [pub, sub];
}

async function worker(config) {
  const [pub, sub] = await redisClients(config.redisUrl);
  const http = createServer(healthz);
  // The adapter subscribes (PSUBSCRIBE socket.io#/#*) as it is made, before the server listens.
  const io = new Server(http, { transports: ["websocket"], serveClient: false, adapter: createAdapter(pub, sub) });
  io.engine.on("connection", (rawSocket) => {
    rawSocket.request = null; // the memory-usage tip of the Socket.IO docs
  });
  io.use(authenticate(config.secret));
  io.on("connection", (socket) => socket.on("subscribe", onSubscribe(socket)));
  http.once("error", (error) => {
    log("ERROR", `cannot listen on ${config.host}:${config.port}: ${error.message}`);
    process.exit(BOOT_ERROR);
  });
  http.listen(config.port, config.host, () => log("INFO", `${LISTENING} ${config.host}:${config.port}`));

  let stopping = false;
  const stop = (signal) => {
    if (stopping) {
      return;
    }
    stopping = true;
    log("INFO", `${signal}: closing ${io.engine.clientsCount} connections`);
    setTimeout(() => process.exit(1), STOP_MS).unref();
    // Every connection closed, then out: leaving closes the Redis connections, which
    // a quit() would not while Redis is away (node-redis would wait for it to return).
    io.close(() => process.exit(0));
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

function main() {
  let config;
  try {
    config = readConfig(process.env);
  } catch (error) {
    log("ERROR", `configuration: ${error.message}`);
    process.exit(2);
  }
  if (cluster.isPrimary) {
    primary(config);
  } else {
    worker(config).catch((error) => {
      log("ERROR", `worker failed to start: ${error.stack}`);
      process.exit(BOOT_ERROR);
    });
  }
}

main();
