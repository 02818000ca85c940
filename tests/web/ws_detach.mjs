// Leave a stream-management session detached for another transport to
// resume (tests/web_transports.rs): alice logs in over WebSocket, bob over
// wss (both @xmpp/client); bob sends x1, which alice gets; alice's socket
// drops without a close; bob sends x2 and x3. Prints
// "DETACHED <sm id> <h>" (h: what alice handled) and exits.
//
// usage: node ws_detach.mjs ALICE_WS_URL BOB_WSS_URL DOMAIN PASSWORD
import { client, xml } from "@xmpp/client";
import { WebSocket } from "ws";

globalThis.WebSocket = WebSocket;
const [aliceUrl, bobUrl, domain, password] = process.argv.slice(2);
setTimeout(() => fail("timed out"), 60000);

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

const alice = client({ service: aliceUrl, domain, username: "alice", password, resource: "web" });
const bob = client({ service: bobUrl, domain, username: "bob", password, resource: "web" });
for (const x of [alice, bob]) x.on("error", (e) => console.log(`error: ${e}`));
const got = [];
// Counted in a middleware after stream management's own, so by the time
// x1 shows here alice's h already counts it.
alice.middleware.use((context, next) => {
  if (context.stanza.is("message")) got.push(context.stanza.attrs.id);
  return next();
});
const message = (id) =>
  xml("message", { to: `alice@${domain}/web`, type: "chat", id }, xml("body", {}, id));

(async () => {
  await alice.start();
  // Presence only once <enabled/> is handled: @xmpp/client 0.14 handles
  // it a tick late and would not count a stanza arriving right behind it.
  await until("stream management", () => alice.streamManagement.enabled && alice.streamManagement.id);
  await alice.send(xml("presence"));
  await bob.start();
  console.log("STEP both online");
  await bob.send(message("x1"));
  await until("x1", () => got.includes("x1"));
  const { id, inbound } = alice.streamManagement;
  alice.reconnect.stop();
  alice.socket.socket.terminate();
  await bob.send(message("x2"));
  await bob.send(message("x3"));
  // Both are with the server once bob's stream answers a ping after them.
  await bob.iqCaller.request(xml("iq", { type: "get", to: domain }, xml("ping", { xmlns: "urn:xmpp:ping" })));
  console.log(`DETACHED ${id} ${inbound}`);
  process.exit(0);
})().catch((e) => fail(e && e.stack ? e.stack : String(e)));
