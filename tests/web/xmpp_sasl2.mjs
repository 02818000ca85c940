// @xmpp/client (npm) logs in with SASL2 (XEP-0388) and Bind 2 (XEP-0386),
// stream management enabled inline, and gets a FAST token (XEP-0484); a
// second client with the same user-agent id then logs in with that token
// alone (its password is wrong, so nothing else could have worked), chats,
// loses its socket and resumes inline in SASL2, with what was sent
// meanwhile arriving once. Run by tests/c2s_sasl2.rs; prints "STEP ..."
// lines the test checks, exits non-zero on any failure.
//
// usage: node xmpp_sasl2.mjs WS_URL DOMAIN PASSWORD
import { client, xml } from "@xmpp/client";
import { WebSocket } from "ws";

globalThis.WebSocket = WebSocket;

const [wsUrl, domain, password] = process.argv.slice(2);
const deadline = setTimeout(() => fail("timed out"), 60000);

function fail(why) {
  console.log("FAIL " + why);
  process.exit(1);
}

async function until(what, pred, ms = 15000) {
  const end = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > end) fail("waiting for " + what);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const tag = Math.random().toString(36).slice(2, 8);
const agentId = globalThis.crypto.randomUUID();

// Every element the client sends and receives, by name and namespace.
function traced(options) {
  const x = client({ service: wsUrl, domain, ...options });
  x.sent = [];
  x.seen = [];
  x.got = [];
  x.on("send", (el) => x.sent.push(el));
  x.on("element", (el) => x.seen.push(el));
  x.on("error", (e) => console.log(`error: ${e}`));
  x.on("stanza", (s) => {
    const body = s.is("message") && s.getChildText("body");
    if (body && body.startsWith(tag + " ")) x.got.push(body.slice(tag.length + 1));
  });
  return x;
}

function seenSuccess(x) {
  return x.seen.find((e) => e.is("success", "urn:xmpp:sasl:2"));
}

function send(from, to, body) {
  return from.send(xml("message", { to, type: "chat", id: `${tag}-${body}` }, xml("body", {}, `${tag} ${body}`)));
}

(async () => {
  // bob is the peer; he logs in the same way.
  const bob = traced({ username: "bob", password, resource: "desk" });
  await bob.start();
  await bob.send(xml("presence"));

  // 1. SASL2 + Bind 2 with the password; a FAST token is asked for.
  let token = null;
  const first = traced({ username: "alice", password, resource: "phone", userAgent: xml("user-agent", { id: agentId }) });
  first.fast.saveToken = async (t) => {
    token = t;
  };
  await first.start();
  const auth1 = first.sent.find((e) => e.is("authenticate", "urn:xmpp:sasl:2"));
  if (!auth1) fail("the client did not use SASL2");
  if (!auth1.getChild("request-token", "urn:xmpp:fast:0")) fail("no FAST token was asked for");
  const ok1 = seenSuccess(first);
  if (!ok1) fail("no SASL2 success");
  const bound = ok1.getChild("bound", "urn:xmpp:bind:0");
  if (!bound) fail("no Bind 2 <bound/> in the success");
  if (!bound.getChild("enabled", "urn:xmpp:sm:3")) fail("stream management not enabled inline");
  if (!String(first.jid).startsWith(`alice@${domain}/phone`)) fail(`bound as ${first.jid}`);
  console.log(`STEP SASL2 ${auth1.attrs.mechanism} with Bind 2 as ${first.jid}, stream management enabled inline`);
  await until("the FAST token", () => token !== null);
  console.log(`STEP FAST token for ${token.mechanism}, expires ${token.expiry}`);
  if (first.seen.some((e) => e.is("bind", "urn:ietf:params:xml:ns:xmpp-bind"))) fail("a legacy bind happened too");
  await first.send(xml("presence"));
  await send(bob, `alice@${domain}`, "hello-first");
  await until("bob's first message", () => first.got.includes("hello-first"));
  await first.stop();

  // 2. The same client (user-agent id) with the token, and a wrong password.
  const alice = traced({ username: "alice", password: "not-the-password", resource: "phone", userAgent: xml("user-agent", { id: agentId }) });
  alice.fast.fetchToken = async () => token;
  alice.fast.saveToken = async (t) => {
    token = t;
  };
  await alice.start();
  const auth2 = alice.sent.find((e) => e.is("authenticate", "urn:xmpp:sasl:2"));
  if (auth2.attrs.mechanism !== "HT-SHA-256-NONE" || !auth2.getChild("fast", "urn:xmpp:fast:0")) fail(`second login used ${auth2.attrs.mechanism}`);
  if (alice.sent.filter((e) => e.is("authenticate", "urn:xmpp:sasl:2")).length !== 1) fail("the token was refused (a password login followed)");
  const ok2 = seenSuccess(alice);
  if (!ok2 || !ok2.getChild("additional-data")) fail("no responder proof in the FAST success");
  console.log(`STEP FAST login (HT-SHA-256-NONE) as ${alice.jid}`);
  await until("stream management", () => alice.streamManagement.enabled && alice.streamManagement.id);
  await alice.send(xml("presence"));
  await send(alice, `bob@${domain}`, "a2b");
  await until("a2b at bob", () => bob.got.includes("a2b"));
  await send(bob, `alice@${domain}`, "b2a-1");
  await until("b2a-1", () => alice.got.includes("b2a-1"));
  console.log("STEP messages both ways after the FAST login");

  // 3. The socket drops; the reconnect resumes inside SASL2 (with FAST).
  const smId = alice.streamManagement.id;
  let resumed = false;
  alice.streamManagement.on("resumed", () => {
    resumed = true;
  });
  const before = alice.sent.length;
  alice.socket.socket.terminate();
  for (let i = 2; i <= 4; i++) await send(bob, `alice@${domain}`, `b2a-${i}`);
  await until("the resume", () => resumed, 20000);
  const auth3 = alice.sent.slice(before).find((e) => e.is("authenticate", "urn:xmpp:sasl:2"));
  if (!auth3 || !auth3.getChild("resume", "urn:xmpp:sm:3")) fail("the reconnect did not resume inside SASL2");
  const ok3 = alice.seen.filter((e) => e.is("success", "urn:xmpp:sasl:2")).pop();
  if (!ok3.getChild("resumed", "urn:xmpp:sm:3")) fail("no <resumed/> in the SASL2 success");
  console.log(`STEP resumed inline with ${auth3.attrs.mechanism}: ${alice.streamManagement.id === smId ? "the same session" : "ANOTHER session"}`);
  const want = ["b2a-1", "b2a-2", "b2a-3", "b2a-4"];
  await until("every message", () => want.every((w) => alice.got.includes(w)));
  await new Promise((r) => setTimeout(r, 500));
  const counts = want.map((w) => alice.got.filter((g) => g === w).length);
  if (counts.some((c) => c !== 1)) fail(`messages not once each: ${JSON.stringify(counts)}`);
  console.log("STEP all 4 messages once each");
  await alice.stop();
  await bob.stop();
  clearTimeout(deadline);
  console.log("STEP done");
  process.exit(0);
})().catch((e) => fail(e && e.stack ? e.stack : String(e)));
