// WebSocket beside TCP: logins per second and server memory per idle
// session, one driver for both (@xmpp/client from tests/web/node_modules,
// in Node on the same machine as the server, so the client's CPU is in
// the figures too). Start a release server first (benches/web_sessions.sh
// does), then:
//
//   node benches/web_sessions.mjs SERVICE_URL DOMAIN PID LABEL [USERS] [LOGINS] [CONCURRENCY]
//
// SERVICE_URL: ws://HOST:PORT/xmpp-websocket, wss://..., or xmpp://HOST:PORT
// (TCP with STARTTLS). Users bench0..benchN-1 with password "pw" must
// exist. Prints one "RESULT {json}" line.
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const mods = path.join(root, "tests/web/node_modules");
const { client, xml } = await import(pathToFileURL(path.join(mods, "@xmpp/client/index.js")));
const { WebSocket } = await import(pathToFileURL(path.join(mods, "ws/wrapper.mjs")));
globalThis.WebSocket = WebSocket;
// Node's TCP sockets wait for the peer's ACK before small writes (Nagle);
// the WebSocket client does not. Both without, for a fair comparison.
const net = await import("node:net");
const connect = net.Socket.prototype.connect;
net.Socket.prototype.connect = function (...args) {
  this.setNoDelay(true);
  return connect.apply(this, args);
};
process.env.NODE_TLS_REJECT_UNAUTHORIZED = "0";

const [service, domain, pid, label, usersArg, loginsArg, concArg] = process.argv.slice(2);
const USERS = +(usersArg || 1000);
const LOGINS = +(loginsArg || 1000);
const CONC = +(concArg || 16);

function rssKb() {
  const s = fs.readFileSync(`/proc/${pid}/status`, "utf8");
  return +s.match(/VmRSS:\s+(\d+)/)[1];
}

function login(i, resource) {
  const x = client({ service, domain, username: `bench${i}`, password: "pw", resource });
  x.on("error", () => {});
  x.reconnect.stop();
  // PLAIN (over TLS, or ws on loopback): the client's SCRAM in JavaScript
  // (PBKDF2, 4096 rounds) would be most of what is measured.
  x.saslFactory._mechs = x.saslFactory._mechs.filter((m) => m.name === "PLAIN");
  return x.start().then(() => x);
}

async function pool(n, conc, f) {
  let next = 0;
  const out = [];
  await Promise.all(
    Array.from({ length: conc }, async () => {
      while (next < n) {
        const i = next++;
        out[i] = await f(i);
      }
    }),
  );
  return out;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Logins: each logs in (SASL, bind) and goes.
const t0 = process.hrtime.bigint();
let failed = 0;
await pool(LOGINS, CONC, async (i) => {
  try {
    const x = await login(i % USERS, `l${i}`);
    await x.stop();
  } catch {
    failed++;
  }
});
const secs = Number(process.hrtime.bigint() - t0) / 1e9;
const loginsPerSec = (LOGINS - failed) / secs;
await sleep(3000);

// Idle sessions: logged in, presence sent, then left alone.
const before = rssKb();
const held = await pool(USERS, CONC, async (i) => {
  const x = await login(i, "idle");
  await x.send(xml("presence"));
  return x;
});
await sleep(5000);
const after = rssKb();
const kbPerSession = (after - before) / USERS;
const result = {
  label,
  service: service.split(":")[0],
  logins: LOGINS,
  login_failures: failed,
  logins_per_sec: +loginsPerSec.toFixed(0),
  idle_sessions: USERS,
  rss_before_kb: before,
  rss_after_kb: after,
  idle_kb_per_session: +kbPerSession.toFixed(1),
};
console.log("RESULT " + JSON.stringify(result));
await Promise.all(held.map((x) => x.stop().catch(() => {})));
process.exit(0);
