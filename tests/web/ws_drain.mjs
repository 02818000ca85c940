// A WebSocket client logs in with raw frames (SASL PLAIN, bind) and waits
// to be told to go: prints "STEP bound", then the <close/> the server
// sends when its node drains (RFC 7395 §3.6.1 see-other-uri).
//
// usage: node ws_drain.mjs WS_URL DOMAIN USER PASSWORD
import { WebSocket } from "ws";

const [url, domain, user, password] = process.argv.slice(2);
setTimeout(() => {
  console.log("FAIL timed out");
  process.exit(1);
}, 60000);

const FRAMING = "urn:ietf:params:xml:ns:xmpp-framing";
const ws = new WebSocket(url, ["xmpp"]);
const queue = [];
let wake = null;
ws.on("message", (d) => {
  queue.push(d.toString());
  if (wake) wake();
});
ws.on("close", (code) => {
  console.log(`STEP websocket closed ${code}`);
  process.exit(0);
});
ws.on("error", (e) => console.log("error " + e));

async function next(pred) {
  for (;;) {
    const i = queue.findIndex(pred);
    if (i >= 0) return queue.splice(i, 1)[0];
    await new Promise((r) => (wake = r));
  }
}

ws.on("open", async () => {
  const open = `<open xmlns='${FRAMING}' to='${domain}' version='1.0'/>`;
  ws.send(open);
  await next((f) => f.includes("<mechanisms"));
  const plain = Buffer.from(`\0${user}\0${password}`).toString("base64");
  ws.send(`<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>${plain}</auth>`);
  const r = await next((f) => f.includes("<success") || f.includes("<failure"));
  if (!r.includes("<success")) {
    console.log("FAIL " + r);
    process.exit(1);
  }
  ws.send(open);
  await next((f) => f.includes("<bind"));
  ws.send("<iq xmlns='jabber:client' type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>");
  await next((f) => f.includes("id='b'") || f.includes('id="b"'));
  console.log("STEP bound");
  const close = await next((f) => f.startsWith("<close"));
  console.log(`STEP told: ${close}`);
});
