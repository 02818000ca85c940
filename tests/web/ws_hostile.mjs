// Hostile input on /xmpp-websocket (RFC 7395), raw frames with ws: each
// case prints "STEP <case>: <what the server did>" for
// tests/web_transports.rs to check. Every case is bounded.
//
// usage: node ws_hostile.mjs WS_URL DOMAIN
import net from "node:net";
import { WebSocket } from "ws";

const [url, domain] = process.argv.slice(2);
setTimeout(() => {
  console.log("FAIL timed out");
  process.exit(1);
}, 90000);

const FRAMING = "urn:ietf:params:xml:ns:xmpp-framing";
const open = (to = domain) => `<open xmlns='${FRAMING}' to='${to}' version='1.0'/>`;

// Send `frames` (after the connection opens) and collect what comes back
// until the server closes the WebSocket (or `ms` pass).
function exchange(frames, { protocols = ["xmpp"], ms = 8000 } = {}) {
  return new Promise((resolve) => {
    const ws = new WebSocket(url, protocols);
    const got = [];
    const done = (how) => {
      clearTimeout(timer);
      resolve({ got, how });
    };
    const timer = setTimeout(() => {
      ws.terminate();
      done("still open");
    }, ms);
    ws.on("unexpected-response", (_req, res) => done(`HTTP ${res.statusCode}`));
    ws.on("error", () => {});
    ws.on("message", (d) => got.push(d.toString()));
    ws.on("close", (code) => done(`closed ${code}`));
    ws.on("open", async () => {
      for (const f of frames) {
        if (f instanceof Buffer) ws.send(f, { binary: true });
        else ws.send(f);
        await new Promise((r) => setTimeout(r, 100));
      }
    });
  });
}

// The stream error's condition, if one came.
function condition(got) {
  for (const f of got) {
    const m = f.match(/<stream:error[^>]*>\s*<([a-z-]+)/);
    if (m) return m[1];
  }
  return "no stream error";
}

async function check(name, frames, opts) {
  const r = await exchange(frames, opts);
  const closedWithClose = r.got.some((f) => f.startsWith("<close"));
  const what = r.how.startsWith("HTTP") ? r.how : `${condition(r.got)}${closedWithClose ? ", <close/>" : ""}, ${r.how}`;
  console.log(`STEP ${name}: ${what}`);
}

// A client that sends its request head one byte a second (slowloris).
function slowloris() {
  return new Promise((resolve) => {
    const u = new URL(url);
    const started = Date.now();
    const s = net.connect(+u.port, u.hostname);
    const head = `GET /xmpp-websocket HTTP/1.1\r\nHost: ${u.host}\r\nUpgrade: websocket\r\n`;
    let i = 0;
    const drip = setInterval(() => {
      if (i < head.length) s.write(head[i++]);
    }, 1000);
    const end = (how) => {
      clearInterval(drip);
      s.destroy();
      resolve(`${how} after ${Math.round((Date.now() - started) / 1000)} s`);
    };
    s.on("data", () => {});
    s.on("close", () => end("cut off"));
    s.on("error", () => {});
    setTimeout(() => end("still open"), 30000);
  });
}

(async () => {
  await check("wrong subprotocol", [], { protocols: ["chat"] });
  await check("not well-formed", [open(), "<message xmlns='jabber:client'>"]);
  await check("two elements in a frame", [open(), "<presence xmlns='jabber:client'/><presence xmlns='jabber:client'/>"]);
  await check("binary frame", [open(), Buffer.from("<presence xmlns='jabber:client'/>")]);
  await check("oversized frame", [open(), `<message xmlns='jabber:client'><body>${"x".repeat(400 * 1024)}</body></message>`]);
  await check("unknown framing element", [open(), `<reopen xmlns='${FRAMING}'/>`]);
  await check("stanza before open", ["<message xmlns='jabber:client'/>"]);
  await check("wrong domain", [open("elsewhere.example")]);
  await check("stanza before authenticating", [open(), "<message xmlns='jabber:client' to='x@y'/>"]);
  const r = await exchange([open(), `<close xmlns='${FRAMING}'/>`]);
  console.log(`STEP clean close: ${r.got.filter((f) => f.startsWith("<close")).length} <close/>, ${r.how}`);
  console.log(`STEP slowloris: ${await slowloris()}`);
  console.log("STEP done");
  process.exit(0);
})().catch((e) => {
  console.log("FAIL " + (e && e.stack ? e.stack : String(e)));
  process.exit(1);
});
