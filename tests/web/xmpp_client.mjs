// @xmpp/client (npm) over WebSocket: login over ws and wss, messages both
// ways, and a stream-management resume after the socket drops (RFC 7395,
// XEP-0198). Run by tests/web_transports.rs; prints "STEP ..." lines the
// test checks, exits non-zero on any failure.
//
// usage: node xmpp_client.mjs WS_URL WSS_URL DOMAIN PASSWORD
import { client, xml } from "@xmpp/client";
import { WebSocket } from "ws";

// Node 20 has no WebSocket of its own; ws can also drop a socket abruptly.
globalThis.WebSocket = WebSocket;

const [wsUrl, wssUrl, domain, password] = process.argv.slice(2);
const deadline = setTimeout(() => fail("timed out"), 60000);

function fail(why) {
  console.log("FAIL " + why);
  process.exit(1);
}

function connect(service, username) {
  const x = client({ service, domain, username, password, resource: "web" });
  x.on("error", (e) => console.log(`error on ${username}: ${e}`));
  x.got = [];
  x.on("stanza", (s) => {
    const body = s.is("message") && s.getChildText("body");
    if (body && body.startsWith(tag + " ")) x.got.push(body.slice(tag.length + 1));
  });
  return x;
}

async function until(what, pred, ms = 15000) {
  const end = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > end) fail("waiting for " + what);
    await new Promise((r) => setTimeout(r, 50));
  }
}

// Bodies carry this run's tag: what an earlier run left offline is not counted.
const tag = Math.random().toString(36).slice(2, 8);

function send(from, to, body) {
  return from.send(xml("message", { to: `${to}@${domain}`, type: "chat", id: `${tag}-${body}` }, xml("body", {}, `${tag} ${body}`)));
}

(async () => {
  const alice = connect(wsUrl, "alice");
  const bob = connect(wssUrl, "bob");
  await alice.start();
  console.log(`STEP alice online over ws as ${alice.jid}`);
  await bob.start();
  console.log(`STEP bob online over wss as ${bob.jid}`);
  await until("stream management on alice", () => alice.streamManagement.enabled && alice.streamManagement.id);
  console.log("STEP stream management enabled");
  // Available, so messages to the bare JID come to these sessions (only
  // once <enabled/> is handled: @xmpp/client 0.14 handles it a tick late
  // and would not count a stanza arriving right behind it).
  await alice.send(xml("presence"));
  await bob.send(xml("presence"));

  await send(alice, "bob", "a2b-1");
  await send(bob, "alice", "b2a-1");
  await until("a2b-1", () => bob.got.includes("a2b-1"));
  await until("b2a-1", () => alice.got.includes("b2a-1"));
  console.log("STEP messages both ways");

  // The socket drops without a close; bob goes on sending meanwhile.
  const smId = alice.streamManagement.id;
  let resumed = false;
  alice.streamManagement.on("resumed", () => {
    resumed = true;
  });
  alice.socket.socket.terminate();
  for (let i = 2; i <= 6; i++) await send(bob, "alice", `b2a-${i}`);
  await until("the resume", () => resumed, 20000);
  console.log(`STEP resumed ${alice.streamManagement.id === smId ? "the same session" : "ANOTHER session"}`);
  const want = ["b2a-1", "b2a-2", "b2a-3", "b2a-4", "b2a-5", "b2a-6"];
  await until("every message", () => want.every((w) => alice.got.includes(w)));
  // Nothing twice: give late duplicates a moment to show.
  await new Promise((r) => setTimeout(r, 1000));
  const twice = want.filter((w) => alice.got.filter((g) => g === w).length > 1);
  if (twice.length) fail("delivered twice: " + twice.join(","));
  console.log(`STEP all ${want.length} messages once each`);
  await send(alice, "bob", "a2b-2");
  await until("a2b-2 after the resume", () => bob.got.includes("a2b-2"));
  console.log("STEP sending after the resume");

  await alice.stop();
  await bob.stop();
  clearTimeout(deadline);
  console.log("STEP done");
  process.exit(0);
})().catch((e) => fail(e && e.stack ? e.stack : String(e)));
