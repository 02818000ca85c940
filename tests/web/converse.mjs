// Converse.js (npm converse.js) in headless Chromium against Starling, over
// WebSocket (RFC 7395) or BOSH (XEP-0124/0206). Alice logs in with
// Converse.js; bob is a slixmpp client over c2s TCP (STARTTLS), possibly on
// another cluster node: tests/interop/slixmpp_chat_peer.py, driven over its
// stdin/stdout line protocol. Messages go both ways, alice's typed into the
// chat textarea and sent through the UI, bob's looked for in the chat view's
// DOM.
// Run by tests/web_converse.rs; prints "STEP ..." lines the test checks,
// exits non-zero with "FAIL reason" on any failure. The browser's console is
// written to stderr, and so is everything bob's script prints.
//
// usage: node converse.mjs TRANSPORT SERVICE_URL BOB_C2S_ADDR DOMAIN PASSWORD SCREENSHOT_PATH [anon=DOMAIN] [room=JID]
//   TRANSPORT     websocket | bosh (how Converse.js reaches SERVICE_URL)
//   SERVICE_URL   ws://HOST:PORT/xmpp-websocket or http://HOST:PORT/http-bind
//   BOB_C2S_ADDR  HOST:PORT of the c2s (STARTTLS) listener bob (slixmpp) uses
// env: CHROMIUM (default /usr/bin/chromium); STARLING_PYTHON (default the
// repository's .venv/bin/python, which has slixmpp)
//   anon=DOMAIN   alice logs in anonymously (SASL ANONYMOUS, XEP-0175) at
//                 this host instead, as whatever temporary JID she is given
//   room=JID      then group chat (XEP-0045) in room JID: bob makes it and
//                 makes alice an owner; she enters with Converse.js, which
//                 registers her nick with the room (§7.10,
//                 auto_register_muc_nickname); bob is refused that nick; messages go both ways through the
//                 room's view, with XEP-0421 occupant ids and XEP-0359
//                 stanza ids; alice retracts bob's message (XEP-0425);
//                 closing the room gives the nick back; back in the room,
//                 she sees what bob said while she was away. The room's
//                 view is kept as SCREENSHOT_PATH-room.png
//   kill=PID      with room=: the room already exists on the node with
//                 process PID (another user made it); alice and bob enter
//                 and talk, then that node is killed (SIGKILL) and they
//                 go on talking in the room once it is back elsewhere
// Accounts alice (unless anonymous) and bob must exist with PASSWORD.
import puppeteer from "puppeteer-core";
import http from "node:http";
import fs from "node:fs";
import path from "node:path";
import readline from "node:readline";
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";

const [transport, serviceUrl, bobAddr, domain, password, screenshotPath, ...opts] = process.argv.slice(2);
const option = (name) => opts.find((o) => o.startsWith(name + "="))?.slice(name.length + 1);
const anonDomain = option("anon");
const roomJid = option("room");
const killPid = option("kill");
if (!["websocket", "bosh"].includes(transport) || !screenshotPath) {
  console.log("FAIL usage: node converse.mjs websocket|bosh SERVICE_URL BOB_C2S_ADDR DOMAIN PASSWORD SCREENSHOT_PATH");
  process.exit(2);
}
const started = Date.now();
const deadline = setTimeout(() => fail("timed out"), 120000);

let browser = null;
let httpServer = null;
let bob = null;
// The last lines of the browser's console, shown again on failure.
const pageLog = [];

function log(line) {
  pageLog.push(line);
  if (pageLog.length > 300) pageLog.shift();
  process.stderr.write(line + "\n");
}

function killBob() {
  if (bob && bob.proc.exitCode === null && bob.proc.signalCode === null) bob.proc.kill("SIGKILL");
}

function fail(why) {
  console.log("FAIL " + why);
  process.stderr.write("--- last browser console lines ---\n" + pageLog.slice(-60).join("\n") + "\n");
  const proc = browser && browser.process();
  if (proc && proc.exitCode === null) proc.kill("SIGKILL");
  killBob();
  process.exit(1);
}

// However this process ends, bob's python does not outlive it (it also
// exits when its stdin closes).
process.on("exit", killBob);
for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"]) process.on(sig, () => fail("got " + sig));

async function until(what, pred, ms = 20000) {
  const end = Date.now() + ms;
  for (;;) {
    // One attempt cannot outlast the wait.
    const left = Math.max(end - Date.now(), 1000);
    if (await bounded(what, Promise.resolve(pred()), left).catch((e) => fail(`${e.message}`))) return;
    if (Date.now() > end) fail("waiting for " + what);
    await new Promise((r) => setTimeout(r, 100));
  }
}

function bounded(what, promise, ms = 20000) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error("timed out: " + what)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

// Bodies carry this run's tag: what an earlier run left offline is not counted.
const tag = Math.random().toString(36).slice(2, 8);
// Anonymous: known once she is logged in.
let aliceJid = `alice@${domain}`;
const bobJid = `bob@${domain}`;

// --- the page: index.html and Converse.js's dist, on loopback -------------
const here = path.dirname(fileURLToPath(import.meta.url));
const python = process.env.STARLING_PYTHON || path.join(here, "..", "..", ".venv", "bin", "python");
const peerScript = path.join(here, "..", "interop", "slixmpp_chat_peer.py");
const dist = path.join(here, "node_modules", "converse.js", "dist");
const types = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript",
  ".mjs": "text/javascript",
  ".css": "text/css",
  ".json": "application/json",
  ".map": "application/json",
  ".wasm": "application/wasm",
  ".ttf": "font/ttf",
  ".woff": "font/woff",
  ".woff2": "font/woff2",
  ".png": "image/png",
  ".svg": "image/svg+xml",
  ".ico": "image/x-icon",
  ".mp3": "audio/mpeg",
  ".ogg": "audio/ogg",
};

const settings = {
  [transport === "websocket" ? "websocket_url" : "bosh_service_url"]: serviceUrl,
  discover_connection_methods: false,
  authentication: anonDomain ? "anonymous" : "login",
  auto_login: true,
  jid: anonDomain ? anonDomain : `${aliceJid}/converse`,
  password: anonDomain ? undefined : password,
  auto_reconnect: false,
  keepalive: false,
  view_mode: "fullscreen",
  assets_path: "/dist/",
  i18n: "en",
  loglevel: "debug",
  allow_non_roster_messaging: true,
  // Register the nick with a room on entering, give it back on closing.
  auto_register_muc_nickname: "unregister",
  play_sounds: false,
  show_desktop_notifications: false,
  whitelisted_plugins: ["starling-probe"],
  // OMEMO is not under test (and loads its wasm relative to the page).
  blacklisted_plugins: ["converse-omemo", "converse-omemo-views"],
};

// Converse.js 14 is an ES module only. A plugin hands the private API to
// the test (the public one has no chats).
const indexHtml = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Converse.js on Starling</title>
<link rel="stylesheet" href="/dist/converse.min.css">
</head>
<body class="converse-fullscreen">
<script type="module">
import converse from "/dist/converse.min.js";
window.starling = { events: [] };
converse.plugins.add("starling-probe", {
  initialize() {
    const api = this._converse.api;
    window.starling.api = api;
    for (const ev of ["connected", "reconnected", "disconnected", "reconnecting", "rosterContactsFetched", "statusInitialized"]) {
      api.listen.on(ev, () => { window.starling.events.push(ev); console.log("EVENT " + ev); });
    }
  },
});
converse.initialize(${JSON.stringify(settings)}).catch((e) => console.error("initialize: " + e));
</script>
</body>
</html>
`;

function serve(req, res) {
  const url = new URL(req.url, "http://127.0.0.1");
  if (url.pathname === "/favicon.ico") {
    res.writeHead(204);
    return res.end();
  }
  if (url.pathname === "/" || url.pathname === "/index.html") {
    res.writeHead(200, { "content-type": types[".html"] });
    return res.end(indexHtml);
  }
  if (url.pathname.startsWith("/dist/")) {
    const file = path.normalize(path.join(dist, decodeURIComponent(url.pathname.slice("/dist/".length))));
    if (file.startsWith(dist + path.sep) && fs.existsSync(file) && fs.statSync(file).isFile()) {
      res.writeHead(200, { "content-type": types[path.extname(file)] || "application/octet-stream" });
      return fs.createReadStream(file).pipe(res);
    }
  }
  log(`page server: 404 ${url.pathname}`);
  res.writeHead(404);
  res.end();
}

function isLoopback(u) {
  if (u.startsWith("data:") || u.startsWith("blob:") || u === "about:blank") return true;
  try {
    const h = new URL(u).hostname;
    return h === "127.0.0.1" || h === "localhost" || h === "[::1]" || /^127\./.test(h);
  } catch {
    return false;
  }
}

// --- bob: slixmpp (tests/interop/slixmpp_chat_peer.py) over c2s TCP -------
// Its stdout is a line protocol: "ONLINE <jid>", "GOT <from> <body>",
// "FAIL ..."; its stdin takes "SEND <to> <body>" and "QUIT".
function startBob() {
  if (!fs.existsSync(python)) fail(`no python at ${python}: make the .venv (tests/interop/requirements.txt) or set STARLING_PYTHON`);
  const proc = spawn(python, [peerScript, `${bobJid}/slixmpp`, password, bobAddr], {
    cwd: path.dirname(peerScript),
    stdio: ["pipe", "pipe", "pipe"],
    env: { ...process.env, PYTHONUNBUFFERED: "1" },
  });
  const b = { proc, jid: null, got: [], group: [], occupants: {}, joined: [], registers: [], retracted: [], exited: null };
  proc.on("error", (e) => fail(`bob's python: ${e}`));
  proc.on("exit", (code, sig) => {
    b.exited = sig || code;
    log(`bob exited: ${b.exited}`);
  });
  proc.stdin.on("error", (e) => log(`bob's stdin: ${e}`));
  readline.createInterface({ input: proc.stderr }).on("line", (l) => log(`bob stderr: ${l}`));
  readline.createInterface({ input: proc.stdout }).on("line", (l) => {
    log(`bob: ${l}`);
    if (l.startsWith("ONLINE ")) b.jid = l.slice("ONLINE ".length);
    else if (l.startsWith("JOINED ")) b.joined.push(l.slice("JOINED ".length));
    else if (l.startsWith("REGISTER ")) b.registers.push(l.slice("REGISTER ".length));
    else if (l.startsWith("UNREGISTER ")) b.registers.push(l.slice("UNREGISTER ".length));
    else if (l.startsWith("OWNER ")) b.registers.push(l.slice("OWNER ".length));
    else if (l.startsWith("RETRACTED ")) {
      const [by, id] = l.slice("RETRACTED ".length).split(" ");
      b.retracted.push({ by, id });
    }
    else if (l.startsWith("OCCUPANT ")) {
      const [who, state] = l.slice("OCCUPANT ".length).split(" ");
      b.occupants[who] = state;
    } else if (l.startsWith("GROUPCHAT ")) {
      const rest = l.slice("GROUPCHAT ".length);
      const from = rest.slice(0, rest.indexOf(" "));
      const body = rest.slice(rest.indexOf(" ") + 1);
      if (body.startsWith(tag + " ")) b.group.push({ from, body: body.slice(tag.length + 1) });
    }
    else if (l.startsWith("FAIL ")) fail(`bob (slixmpp): ${l.slice("FAIL ".length)}`);
    else if (l.startsWith("GOT ")) {
      const rest = l.slice("GOT ".length);
      const body = rest.slice(rest.indexOf(" ") + 1);
      if (body.startsWith(tag + " ")) b.got.push(body.slice(tag.length + 1));
    }
  });
  return b;
}

function bobCommand(line) {
  if (bob.exited !== null) fail(`bob exited (${bob.exited}) before: ${line}`);
  bob.proc.stdin.write(line + "\n");
}

function bobSend(to, body) {
  bobCommand(`SEND ${to} ${tag} ${body}`);
}

// Bob says QUIT and is given a while to log out; then he is killed.
async function stopBob() {
  if (bob.exited === null) bob.proc.stdin.end("QUIT\n");
  const end = Date.now() + 10000;
  while (bob.exited === null && Date.now() < end) await new Promise((r) => setTimeout(r, 100));
  if (bob.exited === null) log("bob did not quit in 10 s: killed");
  else if (bob.exited !== 0) log(`bob's exit status: ${bob.exited}`);
  killBob();
}

// Text of every message in alice's chat view with bob.
function chatTexts(page) {
  return page.$$eval(`converse-chat[jid="${bobJid}"] .chat-msg__text`, (els) => els.map((e) => e.textContent.trim()));
}

// Text of every message in alice's view of the room.
function roomTexts(page) {
  return page.$$eval(`converse-muc[jid="${roomJid}"] .chat-msg__text`, (els) => els.map((e) => e.textContent.trim()));
}

// Bob's answer to one REGISTER (or UNREGISTER) line.
async function bobRegisters(nick) {
  const before = bob.registers.length;
  bobCommand(nick === null ? `UNREGISTER ${roomJid} -` : `REGISTER ${roomJid} ${nick}`);
  await until(`bob's registration of ${nick}`, () => bob.registers.length > before);
  // "<room> <condition> <text...>" or "<room> ok"
  return bob.registers[before].slice(bob.registers[before].indexOf(" ") + 1);
}

// Alice's room, as Converse.js models it.
function inRoom(page, fn, ...args) {
  return page.evaluate(
    (jid, src, args) => window.starling.api.rooms.get(jid).then((m) => new Function("m", "args", src)(m, args)),
    roomJid,
    fn,
    args,
  );
}

// Alice opens the room in Converse.js and waits until she is in it (and
// until Converse.js registered her nick, which it does once in).
async function enterRoom(page) {
  await page.evaluate((jid) => window.starling.api.rooms.open(jid, { nick: "alice" }, true).then(() => true), roomJid);
  const textarea = `converse-muc[jid="${roomJid}"] textarea.chat-textarea`;
  await page.waitForSelector(textarea, { visible: true, timeout: 20000 });
  // ROOMSTATUS.ENTERED
  await until("alice in the room", async () => (await inRoom(page, "return m.session.get('connection_status')")) === 5);
  await until("alice's nick registered with the room", async () => (await inRoom(page, "return m.getReservedNick()")) === "alice");
  return textarea;
}

async function groupChat(page) {
  // bob makes the room and makes alice an owner before she opens it: a
  // room Converse.js makes itself may have answered its disco#info with
  // item-not-found a moment before, and Converse.js then does not know
  // the room takes registrations.
  bobCommand(`JOIN ${roomJid} bob`);
  await until("bob in the room", () => bob.joined.includes(`${roomJid} bob`));
  const before = bob.registers.length;
  bobCommand(`OWNER ${roomJid} ${aliceJid}`);
  await until("alice made an owner", () => bob.registers.length > before);
  if (bob.registers[before] !== `${roomJid} ok`) fail(`making alice an owner: ${bob.registers[before]}`);
  const textarea = await enterRoom(page);
  await until("alice, as bob sees her", () => bob.occupants[`${roomJid}/alice`] === "available");
  console.log(`STEP bob made ${roomJid} and alice, an owner, entered it with converse.js`);

  const refused = await bobRegisters("alice");
  if (!refused.startsWith("conflict") || !refused.includes("reserved")) {
    fail(`bob registering alice's nick got ${refused}, want conflict for a reserved nick`);
  }
  console.log("STEP converse.js registered alice's nick; bob is refused it");

  const b2r = "hello room from bob";
  bobCommand(`GROUP ${roomJid} ${tag} ${b2r}`);
  await until("bob's room message in alice's view", async () => (await roomTexts(page)).includes(`${tag} ${b2r}`));
  const a2r = "hello room from converse";
  await page.click(textarea);
  await page.type(textarea, `${tag} ${a2r}`);
  await page.keyboard.press("Enter");
  await until("alice's room message at bob", () =>
    bob.group.some((m) => m.from === `${roomJid}/alice` && m.body === a2r),
  );
  await until("alice's room message in her own view", async () => (await roomTexts(page)).includes(`${tag} ${a2r}`));
  // XEP-0421 and XEP-0359 as Converse.js read them off bob's message.
  const [occupantId, stanzaId] = await inRoom(
    page,
    "const msg = m.messages.findWhere({ body: args[0] }); return [msg?.get('occupant_id'), msg?.get('stanza_id ' + m.get('jid'))];",
    `${tag} ${b2r}`,
  );
  if (!occupantId || !stanzaId) fail(`bob's message in converse.js: occupant id ${occupantId}, stanza id ${stanzaId}`);
  console.log("STEP room messages both ways, with occupant and stanza ids");
  const roomShot = screenshotPath.replace(/\.png$/, "") + "-room.png";
  await page.screenshot({ path: roomShot, fullPage: false });

  // XEP-0425: alice (the owner, so a moderator) retracts bob's message.
  const answer = await inRoom(
    page,
    "const msg = m.messages.findWhere({ body: args[0] }); return m.retractOtherMessage(msg, 'testing').then((r) => r?.getAttribute?.('type') ?? String(r));",
    `${tag} ${b2r}`,
  );
  if (answer !== "result") fail(`converse.js retracting bob's message got ${answer}`);
  await until("the retraction at bob", () => bob.retracted.some((r) => r.by === `${roomJid}` && r.id === stanzaId));
  await until("bob's message gone from alice's view", async () => !(await roomTexts(page)).includes(`${tag} ${b2r}`));
  console.log("STEP converse.js retracted bob's message; bob was told");

  // Closing the room gives the nick back (auto_register_muc_nickname: "unregister").
  await inRoom(page, "return m.close().then(() => true)");
  await until("alice gone from the room", () => bob.occupants[`${roomJid}/alice`] === "unavailable");
  await until("alice's nick free again", async () => (await bobRegisters("alice")) === "ok");
  if ((await bobRegisters(null)) !== "ok") fail("bob giving the nick back");
  console.log("STEP alice closed the room and her nick is free again");

  // What was said while she was away shows when she comes back.
  const away = "said while alice was away";
  bobCommand(`GROUP ${roomJid} ${tag} ${away}`);
  await until("bob's reflection", () => bob.group.some((m) => m.from === `${roomJid}/bob` && m.body === away));
  await enterRoom(page);
  await until("the message from while she was away", async () => (await roomTexts(page)).includes(`${tag} ${away}`));
  console.log("STEP back in the room, alice sees what was said while she was away");
}

// The room lives on the node `killPid`; alice's and bob's nodes survive.
async function roomFailover(page) {
  const textarea = await enterRoom(page);
  bobCommand(`JOIN ${roomJid} bob`);
  await until("bob in the room", () => bob.joined.includes(`${roomJid} bob`));
  await until("carol (the room's maker, on the room's node), as bob sees her", () => bob.occupants[`${roomJid}/carol`] === "available");
  const say = async (text) => {
    await page.click(textarea);
    await page.type(textarea, `${tag} ${text}`);
    await page.keyboard.press("Enter");
    await until(`"${text}" at bob`, () => bob.group.some((m) => m.from === `${roomJid}/alice` && m.body === text), 30000);
  };
  const hear = async (text) => {
    bobCommand(`GROUP ${roomJid} ${tag} ${text}`);
    await until(`"${text}" in alice's view`, async () => (await roomTexts(page)).includes(`${tag} ${text}`), 30000);
  };
  await say("before");
  await hear("before, from bob");
  console.log("STEP alice and bob talk in a room that lives on another node");

  process.kill(Number(killPid), "SIGKILL");
  await until("carol gone with her node", () => bob.occupants[`${roomJid}/carol`] === "unavailable", 30000);
  await say("after the room's node died");
  await hear("after, from bob");
  const status = await inRoom(page, "return m.session.get('connection_status')");
  if (status !== 5) fail(`alice's room is in state ${status} after the failover, not entered (5)`);
  if (bob.occupants[`${roomJid}/alice`] !== "available") fail("bob saw alice leave");
  console.log("STEP the room's node was killed: the room came back and alice and bob, still in it, go on talking");
}

(async () => {
  if (!fs.existsSync(dist)) fail(`no ${dist}: run npm ci in tests/web`);
  httpServer = http.createServer(serve);
  await new Promise((r) => httpServer.listen(0, "127.0.0.1", r));
  const pageUrl = `http://127.0.0.1:${httpServer.address().port}/`;

  bob = startBob();
  await until("bob (slixmpp) to be online", () => {
    if (bob.exited !== null) fail(`bob (slixmpp) exited (${bob.exited}) before he was online`);
    return bob.jid !== null;
  }, 30000);
  console.log(`STEP bob online with slixmpp as ${bob.jid}`);

  browser = await bounded(
    "chromium's start",
    puppeteer.launch({
      executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
      headless: true, // --headless=new
      args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check"],
      defaultViewport: { width: 1280, height: 800 },
      protocolTimeout: 30000,
    }),
    30000,
  );
  const page = await browser.newPage();
  page.on("console", (m) => log(`console.${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => log(`pageerror: ${e.message}`));
  page.on("requestfailed", (r) => log(`requestfailed: ${r.url()} ${r.failure()?.errorText}`));
  const blocked = [];
  await page.setRequestInterception(true);
  page.on("request", (r) => {
    if (isLoopback(r.url())) return r.continue();
    blocked.push(r.url());
    log(`blocked non-loopback request: ${r.url()}`);
    r.abort("blockedbyclient");
  });
  // WebSocket connections are not seen by request interception: log them.
  const cdp = await page.createCDPSession();
  await cdp.send("Network.enable");
  cdp.on("Network.webSocketCreated", (e) => {
    log(`websocket opened: ${e.url}`);
    if (!isLoopback(e.url)) fail(`page opened a non-loopback websocket ${e.url}`);
  });
  cdp.on("Network.webSocketClosed", () => log("websocket closed"));

  await page.goto(pageUrl, { waitUntil: "load", timeout: 20000 });
  console.log(`STEP converse.js page loaded over ${transport}`);

  const events = () => page.evaluate(() => window.starling.events);
  await until("converse to connect", async () => {
    const ev = await events();
    if (ev.includes("disconnected")) fail("converse disconnected before it was online");
    return ev.includes("connected");
  });
  const me = await page.evaluate(() => window.starling.api.connection.get().jid);
  console.log(`STEP alice logged in with converse.js as ${me}`);
  if (anonDomain) {
    if (!me.split("/")[0].endsWith("@" + anonDomain)) fail(`anonymous login bound ${me}, not a JID at ${anonDomain}`);
    aliceJid = me.split("/")[0];
  }
  await until("the roster", async () => (await events()).includes("rosterContactsFetched"));
  await until("alice's online status", async () => (await page.evaluate(() => window.starling.api.user.status.get())) === "online");
  // The control box shows the logged-in user.
  await until("the control box", () => page.$eval("#controlbox", (e) => !e.classList.contains("logged-out")).catch(() => false));
  console.log("STEP alice roster fetched and online");

  await page.evaluate((jid) => window.starling.api.chats.open(jid, {}, true).then(() => true), bobJid);
  const textarea = `converse-chat[jid="${bobJid}"] textarea.chat-textarea`;
  await page.waitForSelector(textarea, { visible: true, timeout: 20000 });
  console.log(`STEP chat with ${bobJid} open`);

  // bob -> alice (to the bare JID): it has to show in the chat view.
  const b2a = "hello alice from bob";
  bobSend(aliceJid, b2a);
  await until("bob's message in alice's chat view", async () => (await chatTexts(page)).includes(`${tag} ${b2a}`));
  console.log("STEP bob's message shows in alice's chat view");

  // alice -> bob, typed into the textarea and sent with Enter.
  const a2b = "hi bob, converse here";
  await page.click(textarea);
  await page.type(textarea, `${tag} ${a2b}`);
  await page.keyboard.press("Enter");
  await until("alice's message in her own chat view", async () => (await chatTexts(page)).includes(`${tag} ${a2b}`));
  await until("alice's message at bob", () => bob.got.includes(a2b));
  const left = await page.$eval(textarea, (e) => e.value);
  if (left !== "") fail(`the textarea still holds ${JSON.stringify(left)} after sending`);
  console.log("STEP alice's message typed in converse.js reaches bob");

  // And once more each way, now that the chat is going.
  const b2a2 = "second from bob";
  bobSend(me, b2a2);
  await until("bob's second message in the chat view", async () => (await chatTexts(page)).includes(`${tag} ${b2a2}`));
  const a2b2 = "second from alice";
  await page.type(textarea, `${tag} ${a2b2}`);
  await page.keyboard.press("Enter");
  await until("alice's second message at bob", () => bob.got.includes(a2b2));
  const texts = (await chatTexts(page)).filter((t) => t.startsWith(tag + " "));
  const want = [b2a, a2b, b2a2, a2b2].map((t) => `${tag} ${t}`);
  if (JSON.stringify(texts) !== JSON.stringify(want)) fail(`chat view shows ${JSON.stringify(texts)}, want ${JSON.stringify(want)}`);
  console.log("STEP messages both ways, in order in the chat view");

  await page.screenshot({ path: screenshotPath, fullPage: false });
  console.log(`STEP screenshot saved to ${screenshotPath}`);

  if (roomJid && killPid) await roomFailover(page);
  else if (roomJid) await groupChat(page);

  if ((await events()).includes("disconnected")) fail("converse got disconnected during the run");
  if (blocked.length) log(`blocked ${blocked.length} non-loopback request(s)`);
  console.log(`STEP no request left loopback (${blocked.length} blocked)`);

  await bounded("converse's logout", page.evaluate(() => window.starling.api.user.logout().then(() => true)), 10000).catch((e) =>
    log(`logout: ${e}`),
  );
  await bounded("closing chromium", browser.close(), 10000).catch((e) => log(`closing chromium: ${e}`));
  await stopBob();
  httpServer.close();
  clearTimeout(deadline);
  console.log(`STEP done in ${((Date.now() - started) / 1000).toFixed(1)}s`);
  process.exit(0);
})().catch((e) => fail(e && e.stack ? e.stack : String(e)));
