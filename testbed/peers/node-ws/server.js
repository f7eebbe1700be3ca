#!/usr/bin/env node
// A WebSocket push server as a Node.js user would write it: the ws package in cluster workers
// (a process may hold at most 20,000 files here; the primary accepts every connection and hands
// it to a worker, round robin, which bounds the connect rate),
// for ws-bench to measure beside ours. Data frames are echoed; the primary's admin port answers
// POST /broadcast (every worker sends the message to its connections) and GET /conns, summed
// over the workers, in the shapes ws-bench reads. Per-message deflate stays off (ws's default
// for servers, and its documentation's advice for many connections: zlib costs memory per
// connection).
//
// Usage: server.js --listen HOST:PORT --admin HOST:PORT --workers N
'use strict';
const cluster = require('node:cluster');
const http = require('node:http');

function arg(name, fallback) {
  const at = process.argv.indexOf(name);
  return at > 0 && process.argv[at + 1] !== undefined ? process.argv[at + 1] : fallback;
}
function hostPort(text) {
  const at = text.lastIndexOf(':');
  return { host: text.slice(0, at), port: Number(text.slice(at + 1)) };
}

if (cluster.isPrimary) {
  const listen = arg('--listen');
  const admin = arg('--admin');
  const workers = Math.max(1, Number(arg('--workers', '1')));
  if (!listen || !admin) {
    console.error('usage: server.js --listen HOST:PORT --admin HOST:PORT --workers N');
    process.exit(2);
  }
  let seq = 0;
  let asked = 0;
  const waiting = new Map(); // question id -> { left, answers, done }
  const all = [];
  for (let i = 0; i < workers; i++) {
    const w = cluster.fork({ PEER_LISTEN: listen });
    w.on('message', (m) => {
      const q = waiting.get(m.id);
      if (!q) return;
      q.answers.push(m);
      if (--q.left === 0) {
        waiting.delete(m.id);
        q.done(q.answers);
      }
    });
    all.push(w);
  }
  cluster.on('exit', (w, code, signal) => {
    console.error(`node-ws worker ${w.process.pid} ended (${signal || code})`);
  });
  // Ask every worker; answer once all have.
  function ask(question, done) {
    const id = ++asked;
    waiting.set(id, { left: all.length, answers: [], done });
    for (const w of all) w.send({ ...question, id });
  }
  const server = http.createServer((req, res) => {
    const reply = (status, body) => {
      const text = JSON.stringify(body);
      res.writeHead(status, {
        'Content-Type': 'application/json',
        'Content-Length': Buffer.byteLength(text),
        Connection: 'close',
      });
      res.end(text);
    };
    if (req.method === 'GET' && req.url === '/conns') {
      ask({ type: 'conns' }, (answers) => {
        const sum = (k) => answers.reduce((s, a) => s + a[k], 0);
        reply(200, { conns: sum('conns'), closed: sum('closed') });
      });
    } else if (req.method === 'POST' && req.url === '/broadcast') {
      const chunks = [];
      req.on('data', (c) => chunks.push(c));
      req.on('end', () => {
        const started = process.hrtime.bigint();
        // Wall-clock nanoseconds (the clients measure latency against their own clock).
        const ts = BigInt(Math.round((performance.timeOrigin + performance.now()) * 1e6));
        seq += 1;
        const body = Buffer.concat(chunks).toString();
        const data = body.length > 0 ? body : `server time ${ts}`;
        const text = `{"ts":${ts},"seq":${seq},"kind":"broadcast","data":${JSON.stringify(data)}}`;
        ask({ type: 'broadcast', text }, (answers) => {
          const sent = answers.reduce((s, a) => s + a.sent, 0);
          const fanout = Math.max(...answers.map((a) => a.ms));
          const elapsed = Number(process.hrtime.bigint() - started) / 1e6;
          reply(200, {
            seq, queued: sent, websockets: sent, polls: 0,
            payload_bytes: Buffer.byteLength(text), fanout_ms: fanout, elapsed_ms: elapsed,
          });
        });
      });
    } else {
      reply(404, { error: 'POST /broadcast or GET /conns' });
    }
  });
  const a = hostPort(admin);
  server.listen(a.port, a.host, () => {
    console.error(`node-ws: ${workers} worker(s) on ${listen}, admin on ${admin}`);
  });
} else {
  const { WebSocketServer } = require('ws');
  const l = hostPort(process.env.PEER_LISTEN);
  const wss = new WebSocketServer({ host: l.host, port: l.port, path: '/ws', perMessageDeflate: false });
  let closed = 0;
  wss.on('connection', (ws) => {
    ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
    ws.on('close', () => { closed += 1; });
    ws.on('error', () => {});
  });
  process.on('message', (m) => {
    if (m.type === 'conns') {
      process.send({ id: m.id, conns: wss.clients.size, closed });
    } else if (m.type === 'broadcast') {
      const started = process.hrtime.bigint();
      let sent = 0;
      // Encoded once; every connection sends the same bytes.
      const text = Buffer.from(m.text);
      for (const ws of wss.clients) {
        if (ws.readyState === 1) {
          ws.send(text, { binary: false });
          sent += 1;
        }
      }
      process.send({ id: m.id, sent, ms: Number(process.hrtime.bigint() - started) / 1e6 });
    }
  });
}
