"""``make bench``: the gateway against a plain Flask-SocketIO baseline and a Node.js peer, side by side.

One run starts a private redis-server, then for each system under test a real
gunicorn (or node, for the Node.js Socket.IO server), a pool of paced publisher
processes and asyncio load-generator processes, and measures four scenarios with the same load generator:

1. connections: how many clients one instance holds, and memory per connection;
2. latency: publish-to-receive latency at a fixed rate (1,000 updates/s);
3. hostile neighbour: the same latency while one more client sends messages
   of the largest size allowed as fast as it can;
4. max sustained rate: the highest stepped rate still delivered (>= 99 %,
   p99 < 500 ms), what the first overload loses or duplicates, and whether
   delivery recovers after it.

Modules: :mod:`bench.runner` (the scenarios), :mod:`bench.loadgen` (the
clients), :mod:`bench.hostile` (the flooding client), :mod:`bench.publish`
(the publishers), :mod:`bench.systems` (the servers and their processes),
:mod:`bench.stats` (lost, duplicated, percentiles), :mod:`bench.report`
(tables and JSON), :mod:`bench.baseline` (the baseline app), :mod:`bench.nodejs`
(the Node.js system's install check and emitter process; its JavaScript is in
``bench/node/``).
"""
