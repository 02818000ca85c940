// The status page (/admin) in headless Chromium (Debian chromium, driven by
// puppeteer-core): it must show every node of the cluster, one leader, the
// sessions on each node, and refresh itself. Prints "STEP ..." lines and a
// "ROW id role sessions" line per node for tests/admin_http.rs to check;
// keeps a screenshot.
//
// usage: node status_page.mjs PAGE_URL TOKEN NODES SCREENSHOT_PATH
import puppeteer from "puppeteer-core";

const [pageUrl, token, nodes, screenshotPath] = process.argv.slice(2);
const want = Number(nodes);
let browser = null;
const deadline = setTimeout(() => fail("timed out"), 60000);

function fail(why) {
  console.log("FAIL " + why);
  const proc = browser && browser.process();
  if (proc && proc.exitCode === null) proc.kill("SIGKILL");
  process.exit(1);
}

(async () => {
  browser = await puppeteer.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check"],
    defaultViewport: { width: 1100, height: 500 },
    protocolTimeout: 30000,
  });
  const page = await browser.newPage();
  page.on("console", (m) => process.stderr.write(`console.${m.type()}: ${m.text()}\n`));
  page.on("pageerror", (e) => process.stderr.write(`pageerror: ${e.message}\n`));
  // The token in the fragment: never sent to the server in a URL.
  await page.goto(`${pageUrl}#token=${encodeURIComponent(token)}`, { waitUntil: "load", timeout: 20000 });
  console.log("STEP status page loaded");
  const rows = () =>
    page.$$eval("#nodes tbody tr", (trs) =>
      trs.map((tr) => ({
        leader: tr.className === "leader",
        cells: [...tr.querySelectorAll("td")].map((td) => td.textContent),
      })),
    );
  const end = Date.now() + 30000;
  let r = [];
  for (;;) {
    r = await rows();
    const ready = r.length === want && r.every((x) => x.cells[2] !== "unreachable") && r.filter((x) => x.leader).length === 1;
    // Rates need two samples: wait for the second refresh too.
    if (ready && r.every((x) => x.cells[8] !== "–")) break;
    if (Date.now() > end) fail(`the table shows ${JSON.stringify(r)}`);
    await new Promise((res) => setTimeout(res, 200));
  }
  console.log(`STEP ${r.length} nodes shown, one leader, refreshed`);
  for (const x of r) console.log(`ROW ${x.cells[0]} ${x.cells[2]} ${x.cells[7]}`);
  const summary = await page.$eval("#summary", (e) => e.textContent);
  console.log(`SUMMARY ${summary}`);
  await page.screenshot({ path: screenshotPath, fullPage: false });
  console.log(`STEP screenshot saved to ${screenshotPath}`);
  await browser.close();
  clearTimeout(deadline);
  console.log("STEP done");
  process.exit(0);
})().catch((e) => fail(e && e.stack ? e.stack : String(e)));
