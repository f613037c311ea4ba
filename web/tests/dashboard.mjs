// Drives the dashboard in headless Chromium (Debian's `chromium`, through
// playwright-core) against a running control plane, gateway and connector
// that tests/dashboard.rs started. Each check prints one line; any failure
// throws, which exits 1 with the reason.
//
// Environment: DASHBOARD (gateway http URL), CONTROL (control plane URL),
// TENANT, CLIENT, DATASET, ROWS (rows in DATASET), LIVE (a live dataset),
// USER_TOKEN, ADMIN_TOKEN, CHROMIUM (browser binary), OUT (screenshots).

import { chromium } from "playwright-core";
import { writeFileSync } from "node:fs";

const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set`);
  return v;
};
const check = (ok, what) => {
  if (!ok) throw new Error(`FAILED: ${what}`);
  console.log(`ok - ${what}`);
};

const browser = await chromium.launch({
  executablePath: env("CHROMIUM"),
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
const consoleErrors = [];
page.on("pageerror", (e) => consoleErrors.push(e.message));
const notFound = [];
page.on("response", (r) => { if (r.status() === 404) notFound.push(r.url()); });

let loaded = false;
async function signIn(dataset) {
  if (!loaded) {
    // The first time through a link that pre-fills the form (as the demo prints).
    const url = `${env("DASHBOARD")}/#control=${encodeURIComponent(env("CONTROL"))}&tenant=${env("TENANT")}&client=${env("CLIENT")}&dataset=${dataset}`;
    await page.goto(url);
    loaded = true;
    check((await page.inputValue("#control-form input[name=client]")) === env("CLIENT"), "the link pre-filled the sign-in form");
  } else {
    await page.fill("#control-form input[name=dataset]", dataset);
  }
  await page.fill("#control-form input[name=user]", env("USER_TOKEN"));
  await page.click("#control-form button[type=submit]");
  try {
    await page.waitForFunction((d) => [...document.querySelectorAll("#datasets option")].some((o) => o.value === d), dataset, { timeout: 15000 });
  } catch (e) {
    throw new Error(`signing in for ${dataset} failed; the page says: ${await page.textContent("#message")}`);
  }
  await page.selectOption("#datasets", dataset);
}

/** Counts canvas pixels that are not (near) white or transparent. */
const inkedPixels = () => page.evaluate(() => {
  const c = document.getElementById("chart");
  const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 0; i < d.length; i += 4) if (d[i + 3] > 0 && (d[i] < 200 || d[i + 1] < 200 || d[i + 2] < 200)) n++;
  return n;
});

// 1. Query: sign in through the control plane, rows and chart arrive
//    batch by batch, before the stream has ended.
await signIn(env("DATASET"));
check((await page.textContent("#session-state")).includes("connected to edge"), "signed in through the control plane and connected");
const blank = await inkedPixels();
await page.click("#query");
await page.waitForFunction(() => document.getElementById("st-state").textContent.startsWith("done"), null, { timeout: 60000 });
const rows = Number((await page.textContent("#st-rows")).replace(/[^0-9]/g, ""));
check(rows === Number(env("ROWS")), `all ${env("ROWS")} rows arrived (status bar says ${rows})`);
const t = await page.evaluate(() => window.__sluice);
check(t.batches.length > 1, `rendered batch by batch (${t.batches.length} batches)`);
check(t.batches[0].at < t.binaries[t.binaries.length - 1], "the first batch was on screen before the last bytes arrived");
const tableRows = await page.locator("#rows tbody tr").count();
check(tableRows > 0, `table shows the first rows (${tableRows})`);
const inked = await inkedPixels();
check(inked > blank + 500, `chart rendered (${inked} drawn pixels, ${blank} before)`);
writeFileSync(`${env("OUT")}/query.png`, await page.screenshot({ fullPage: true }));
for (const id of ["#st-bytes", "#st-rate", "#st-quota"]) {
  const text = await page.textContent(id);
  check(/[0-9]/.test(text), `status bar ${id}: ${text}`);
}
check(/rows\/s/.test(await page.textContent("#st-rate")), "the rate says rows/s too");
// The chart: ids and constant columns off by default, the user's choice
// otherwise; sampled across the whole answer, and it says so; a year of
// data labelled with dates.
const picked = await page.evaluate(() => Object.fromEntries([...document.querySelectorAll("#columns input")].map((b) => [b.value, b.checked])));
check(picked.temperature === true && picked.pressure === true, `measures are charted: ${JSON.stringify(picked)}`);
check(picked.order_id === false && picked.version === false, `the id and the constant column are not: ${JSON.stringify(picked)}`);
const note = await page.textContent("#chart-note");
check(/every \d+th row/.test(note) && note.includes(Number(env("ROWS")).toLocaleString("en-US")), `the chart says it is sampled: ${note}`);
const ticks = await page.evaluate(() => window.__sluice.chart().scales.x.ticks.map((t) => t.label));
check(ticks.length > 2 && ticks.every((t) => /^\d{4}-\d{2}-\d{2}$/.test(t)) && ticks[0].startsWith("2025-01") && ticks[ticks.length - 1] >= "2025-10", `the time axis spans the year with dates: ${ticks.join(", ")}`);
const cells = await page.evaluate(() => [...document.querySelectorAll("#rows tbody tr")].slice(0, 50).map((tr) => tr.children[2].textContent));
check(cells.every((c) => /^\d+\.\d{3}$/.test(c)), `temperatures all with three decimals: ${cells.slice(0, 5).join(", ")}`);
const boxes = page.locator("#columns input[value=order_id]");
await boxes.check();
check(await page.evaluate(() => window.__sluice.chart().isDatasetVisible(0)), "ticking a column charts it");

// A refused query: the status bar does not keep the last answer's figures.
await page.evaluate(() => { const o = document.createElement("option"); o.value = o.textContent = "no_such_dataset"; document.getElementById("datasets").appendChild(o); });
await page.selectOption("#datasets", "no_such_dataset");
await page.click("#query");
await page.waitForFunction(() => !document.getElementById("message").hidden, null, { timeout: 10000 });
check((await page.textContent("#st-rows")) === "0 rows" && (await page.textContent("#st-bytes")) === "0 B", `after a refusal the status bar reads ${await page.textContent("#st-rows")}, ${await page.textContent("#st-bytes")}`);
check((await page.textContent("#message")).includes('no_such_dataset'), `the refusal is shown with the gateway's detail: ${await page.textContent("#message")}`);

// Live view of a static dataset: it says why nothing comes.
await signIn(env("DATASET"));
check((await page.textContent("#datasets-note")).includes(`only ${env("DATASET")}`), `the page says what the token allows: ${await page.textContent("#datasets-note")}`);
await page.click("#live");
await page.waitForFunction(() => !document.getElementById("message").hidden, null, { timeout: 15000 });
const quiet = await page.textContent("#message");
check(quiet.includes("not a live feed"), `a live view of a static dataset says so: ${quiet}`);
writeFileSync(`${env("OUT")}/static-live.png`, await page.screenshot({ fullPage: true }));

// 2. Live feed (a session of its own: a grant names one dataset): the
//    chart keeps moving.
await signIn(env("LIVE"));
await page.click("#live");
await page.waitForFunction(() => window.__sluice.batches.length > 0 && document.getElementById("st-state").textContent.startsWith("live"), null, { timeout: 15000 });
const before = await page.evaluate(() => window.__sluice.batches.length);
await page.waitForTimeout(2500);
const after = await page.evaluate(() => window.__sluice.batches.length);
check(after > before + 1, `live view keeps updating (${before} → ${after} batches)`);
writeFileSync(`${env("OUT")}/live.png`, await page.screenshot({ fullPage: true }));

// 3. Revocation: an admin revokes this session; the page says so.
const grantSid = await page.evaluate(() => window.__sluiceSid);
const revoke = await fetch(`${env("CONTROL")}/control/revoke/${grantSid}`, { method: "POST", headers: { Authorization: `Bearer ${env("ADMIN_TOKEN")}` } });
check(revoke.status === 200, `admin revoked session ${grantSid} (${revoke.status})`);
await page.waitForFunction(() => !document.getElementById("message").hidden, null, { timeout: 10000 });
const message = await page.textContent("#message");
check(message.includes("revoked by an administrator"), `the page says: ${message}`);
check((await page.evaluate(() => document.body.dataset.closeCode)) === "4410", "close code 4410");
writeFileSync(`${env("OUT")}/revoked.png`, await page.screenshot({ fullPage: true }));

check(consoleErrors.length === 0, `no page errors ${consoleErrors.join("; ")}`);
check(notFound.length === 0, `no request answered 404 ${notFound.join(", ")}`);
await browser.close();
