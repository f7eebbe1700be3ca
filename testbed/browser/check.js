#!/usr/bin/env node
// A real browser against ws-server: the system's headless Chromium, driven by playwright-core,
// runs a page that opens a WebSocket as a device (its token in a subprotocol, as browsers must),
// receives a targeted push and a broadcast, then long-polls with fetch (its token in the query).
// Prints one line per step so that the Rust test can act between them:
//   connected <subprotocol>, message <json> (twice), polling, poll <status> <body>, screenshot <path>
// Usage: check.js SERVER(host:port) WS_ID WS_TOKEN POLL_ID POLL_TOKEN SCREENSHOT
'use strict';
const { chromium } = require('playwright-core');

const [server, wsId, wsToken, pollId, pollToken, screenshot] = process.argv.slice(2);
const executablePath = ['/usr/bin/chromium', '/usr/bin/chromium-browser'].find((p) => require('node:fs').existsSync(p));

(async () => {
  if (!executablePath) throw new Error('no system Chromium (apt-get install chromium)');
  // As root in a network namespace: Chromium's sandbox needs user namespaces we do not give it.
  const browser = await chromium.launch({ executablePath, args: ['--no-sandbox'] });
  try {
    const page = await browser.newPage();
    await page.setContent('<html><body><h1>ws-server from Chromium</h1><pre id="log"></pre></body></html>');
    await page.exposeFunction('report', (line) => console.log(line));
    await page.evaluate(async ({ server, wsId, wsToken }) => {
      const log = (line) => {
        document.getElementById('log').textContent += line + '\n';
        window.report(line);
      };
      await new Promise((resolve, reject) => {
        const ws = new WebSocket(`ws://${server}/ws?id=${wsId}`, ['push.v1', `bearer.${wsToken}`]);
        let got = 0;
        ws.onopen = () => log(`connected ${ws.protocol}`);
        ws.onmessage = (e) => {
          log(`message ${e.data}`);
          if (++got === 2) { ws.close(1000, 'done'); resolve(); }
        };
        ws.onerror = () => reject(new Error('WebSocket error'));
        setTimeout(() => reject(new Error('no messages within 30 s')), 30000);
      });
    }, { server, wsId, wsToken });
    await page.evaluate(async ({ server, pollId, pollToken }) => {
      const log = (line) => {
        document.getElementById('log').textContent += line + '\n';
        window.report(line);
      };
      log('polling');
      const answer = await fetch(`http://${server}/poll?id=${pollId}&token=${pollToken}`);
      log(`poll ${answer.status} ${await answer.text()}`);
    }, { server, pollId, pollToken });
    await page.screenshot({ path: screenshot });
    console.log(`screenshot ${screenshot}`);
  } finally {
    await browser.close();
  }
})().catch((e) => {
  console.log(`error ${e.message}`);
  process.exit(1);
});
