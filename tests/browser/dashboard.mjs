// Drives weir serve's dashboard in a real headless Chromium (Debian's
// `chromium` through playwright-core), as an operator would. Run by the
// Rust test `dashboard::` (tests/all/dashboard.rs), which starts the service
// and passes everything in the environment:
//   WEIR_URL, TOKEN_A, TOKEN_B, TOKEN_OPERATOR, FLIGHTS_CSV, CLEAN_WASM,
//   PANIC_WASM, IDENTITY_SHA, PANIC_SHA, SCREENSHOTS, CHROMIUM, PLAYWRIGHT_CORE
// Exits non-zero with the failed step on any failed expectation.
import { copyFileSync, mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import assert from "node:assert/strict";

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`missing environment variable ${name}`);
  return value;
};
const url = env("WEIR_URL");
const shots = env("SCREENSHOTS");
mkdirSync(shots, { recursive: true });
const { chromium } = await import(pathToFileURL(join(env("PLAYWRIGHT_CORE"), "index.mjs")).href);

let stepName = "start";
const step = (name) => { stepName = name; console.log(`step: ${name}`); };
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Waits until `probe()` returns a truthy value (polled every 100 ms). */
async function until(what, probe, timeoutMs = 20000) {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (Date.now() < deadline) {
    try {
      last = await probe();
      if (last) return last;
    } catch (e) { last = e; }
    await sleep(100);
  }
  throw new Error(`timed out waiting for ${what} (last: ${last})`);
}

/** Posts `body` to a pipeline of tenant `token`'s, as a producer would. */
async function post(token, pipeline, contentType, body) {
  const response = await fetch(`${url}/v1/pipelines/${pipeline}/records`, {
    method: "POST",
    headers: { authorization: `Bearer ${token}`, "content-type": contentType },
    body,
  });
  const text = await response.text();
  assert.equal(response.status, 200, `posting to ${pipeline}: ${text}`);
  return JSON.parse(text);
}

const number = (text) => Number(String(text).replace(/[^0-9.-]/g, ""));

const browser = await chromium.launch({
  executablePath: env("CHROMIUM"),
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});
const desktop = { width: 1280, height: 860 };
const narrow = { width: 390, height: 844 };

/** A screenshot of the page at desktop and narrow widths. */
async function snap(page, name) {
  await page.setViewportSize(desktop);
  await page.screenshot({ path: join(shots, `${name}-desktop.png`), fullPage: true });
  await page.setViewportSize(narrow);
  await page.screenshot({ path: join(shots, `${name}-narrow.png`), fullPage: true });
  await page.setViewportSize(desktop);
}

async function login(page, token) {
  await page.goto(`${url}/ui/`);
  await page.getByLabel("API token").fill(token);
  await page.getByRole("button", { name: "Log in" }).click();
  await page.locator("#who-name").waitFor({ state: "visible" });
}

// Script errors on any page; one fails the run.
const failures = [];

let page;
try {
  const context = await browser.newContext({ viewport: desktop });
  page = await context.newPage();
  page.on("pageerror", (e) => failures.push(`page error: ${e.message}`));
  page.on("console", (m) => {
    console.log(`console.${m.type()}: ${m.text()}`);
    // The browser logs every 4xx answer; the tests cause some on purpose.
    if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) failures.push(`console error: ${m.text()}`);
  });
  page.on("response", (r) => { if (r.status() >= 400) console.log(`HTTP ${r.status()} ${r.url()}`); });

  step("the login page refuses a wrong token and says why");
  await page.goto(`${url}/ui/`);
  await page.getByLabel("API token").waitFor();
  await snap(page, "login");
  await page.getByLabel("API token").fill(`weir_${"0".repeat(64)}`);
  await page.getByRole("button", { name: "Log in" }).click();
  await page.getByRole("alert").filter({ hasText: "invalid token" }).waitFor();

  step("tenant a logs in and sees its pipelines, not tenant b's");
  await login(page, env("TOKEN_A"));
  assert.equal(await page.locator("#who-name").textContent(), "tenant a");
  await page.locator('tr[data-pipeline="flights"]').waitFor();
  await page.locator('tr[data-pipeline="events"]').waitFor();
  assert.equal(await page.locator('tr[data-pipeline="orders"]').count(), 0, "tenant b's pipeline is not listed");
  assert.equal(await page.locator("#nav-tenants").isVisible(), false, "no tenants view for a tenant");

  step("the flights pipeline updates on the page while records are posted");
  const receivedCell = page.locator('tr[data-pipeline="flights"] td.received');
  const before = number(await receivedCell.textContent());
  const lines = readFileSync(env("FLIGHTS_CSV"), "utf8").trim().split("\n");
  const header = lines.shift();
  let posted = 0;
  const seen = new Set();
  for (let i = 0; i < lines.length; i += 200) {
    const chunk = lines.slice(i, i + 200);
    await post(env("TOKEN_A"), "flights", "text/csv", `${header}\n${chunk.join("\n")}\n`);
    posted += chunk.length;
    seen.add(number(await receivedCell.textContent()));
    await sleep(700);
  }
  await until("the received count to reach what was posted", async () =>
    number(await receivedCell.textContent()) >= before + posted);
  seen.add(number(await receivedCell.textContent()));
  assert.ok(seen.size >= 3, `the count moved while posting, without reloading (values seen: ${[...seen]})`);
  await until("a records/s sparkline", async () => (await page.locator('tr[data-pipeline="flights"] svg.spark polyline').count()) > 0);
  await snap(page, "overview");

  step("the pipeline view shows the stage graph with versions and counts");
  await page.locator('tr[data-pipeline="flights"] a').first().click();
  await page.locator('.node[data-stage="validate"]').waitFor();
  for (const stage of ["validate", "enrich", "mask"]) {
    await page.locator(`.node[data-stage="${stage}"] .version`).waitFor();
  }
  await until("sink written count", async () => number(await page.locator('.node[data-node="sink"] .written').textContent()) > 0);
  await snap(page, "pipeline");

  step("a regression is hot-swapped in: the events pipeline's clean stage now traps on some rows");
  copyFileSync(env("PANIC_WASM"), env("CLEAN_WASM"));
  await page.goto(`${url}/ui/#/plugins`);
  const cleanRow = page.locator('tr[data-pipeline="events"][data-stage="clean"]');
  await until("the plugins view to show the new version", async () =>
    (await cleanRow.locator(".version").textContent()) === env("PANIC_SHA").slice(0, 12));
  // Records through the broken version: one traps, one fails validation.
  const events = [
    { id: 1, action: "ok", value: 1 }, { id: 2, action: "trap", value: 2 },
    { id: 3, action: "ok", value: -5 }, { id: 4, action: "ok", value: 4 },
  ].map((r) => JSON.stringify(r)).join("\n");
  const ack = await post(env("TOKEN_A"), "events", "application/x-ndjson", `${events}\n`);
  assert.equal(ack.quarantined, 2, `one trap and one validation failure: ${JSON.stringify(ack)}`);

  step("roll back the plugin from the page, after confirming");
  await cleanRow.getByRole("button", { name: "Roll back" }).click();
  const dialog = page.locator("dialog#confirm");
  await dialog.waitFor({ state: "visible" });
  assert.match(await dialog.textContent(), /previous version/);
  await dialog.getByRole("button", { name: "Roll back" }).click();
  await until("the version to change back", async () =>
    (await cleanRow.locator(".version").textContent()) === env("IDENTITY_SHA").slice(0, 12));
  await snap(page, "plugins");

  step("filter the quarantine by error kind and replay the trapped row");
  await page.goto(`${url}/ui/#/t/a/p/events/quarantine`);
  await page.locator("#matched").waitFor();
  await page.getByLabel("Error kind").selectOption("trap");
  await page.getByRole("button", { name: "Apply filter" }).click();
  await until("only trap rows listed", async () => {
    const kinds = await page.locator("tbody tr td.kind").allTextContents();
    return kinds.length >= 1 && kinds.every((k) => k === "trap");
  });
  const trapRows = await page.locator("tbody tr td.kind").count();
  assert.equal(trapRows, 1, "one trapped row");
  await page.locator("tbody tr").first().locator("td.mono button").click();
  await until("the record shown", async () => (await page.locator("pre.record").textContent()).includes('"trap"'));
  const writtenBefore = number(await page.locator("#sink-written .value").textContent());
  await page.locator("tbody tr").first().getByRole("checkbox").check();
  await page.getByRole("button", { name: "Replay selected (1)" }).click();
  await until("the replay result", async () => (await page.locator("#replay-result").textContent()).includes("Replayed 1: 1 written"));
  await until("the sink count to change", async () =>
    number(await page.locator("#sink-written .value").textContent()) === writtenBefore + 1);
  await page.getByLabel("Error kind").selectOption("");
  await page.getByRole("button", { name: "Apply filter" }).click();
  await page.locator("tbody tr td.kind", { hasText: "validation" }).first().waitFor();
  await snap(page, "quarantine");

  step("a long quarantine is listed a page at a time");
  await page.goto(`${url}/ui/#/t/a/p/flights/quarantine`);
  // "118 rows match; showing the first 100."
  const matched = Number((await page.locator("#matched").textContent()).match(/^[\d,]+/)[0].replaceAll(",", ""));
  assert.ok(matched > 100, `the flights sample quarantines more than a page (${matched})`);
  assert.equal(await page.locator("tbody tr").count(), 100);
  await page.getByRole("button", { name: /^Show \d+ more$/ }).click();
  await until("the next page", async () => (await page.locator("tbody tr").count()) === Math.min(200, matched));

  step("the runs view lists the schedule and the served intervals; a run's detail opens");
  await page.goto(`${url}/ui/#/runs`);
  const schedule = page.locator('tr[data-schedule="nightly"]');
  await schedule.waitFor();
  assert.match(await schedule.textContent(), /Europe\/Paris/);
  const runLink = page.locator("tr[data-run] a").first();
  await until("a served interval in the history", async () => (await runLink.count()) > 0, 30000);
  await snap(page, "runs");
  await runLink.click();
  await page.getByRole("heading", { name: /^Run serve-/ }).waitFor();
  await snap(page, "run");

  step("tenant a's session cannot see or act on tenant b's pipelines");
  await page.goto(`${url}/ui/#/t/b/p/orders`);
  await page.getByRole("alert").filter({ hasText: "no tenant `b`" }).waitFor();
  const csrf = await page.evaluate(async () => (await (await fetch("/v1/session")).json()).csrf_token);
  const foreign = await page.evaluate(async (token) => {
    const list = await fetch("/v1/tenants/b/pipelines");
    const pause = await fetch("/v1/tenants/b/pipelines/orders/pause", { method: "POST", headers: { "x-csrf-token": token } });
    return [list.status, pause.status];
  }, csrf);
  assert.deepEqual(foreign, [404, 404], "another tenant's pipelines do not exist for this session");

  step("a change without the CSRF token, or without the cookie, is refused");
  const refused = await page.evaluate(async () => {
    const noCsrf = await fetch("/v1/tenants/a/pipelines/events/pause", { method: "POST" });
    const noCookie = await fetch("/v1/tenants/a/pipelines/events/pause", { method: "POST", credentials: "omit" });
    return [noCsrf.status, (await noCsrf.json()).error, noCookie.status];
  });
  assert.equal(refused[0], 403, "no CSRF token: 403");
  assert.match(refused[1], /CSRF/);
  assert.equal(refused[2], 401, "no cookie: 401");
  const state = await page.evaluate(async () => (await (await fetch("/v1/tenants/a/pipelines/events")).json()).state);
  assert.equal(state, "running", "nothing was paused");

  step("log out; the operator logs in and sees every tenant");
  await page.getByRole("button", { name: "Log out" }).click();
  await page.getByLabel("API token").waitFor();
  assert.equal(await page.evaluate(async () => (await fetch("/v1/tenants/a/pipelines")).status), 401, "the session ended");
  await login(page, env("TOKEN_OPERATOR"));
  await page.locator('tr[data-pipeline="orders"][data-tenant="b"]').waitFor();
  await page.locator('tr[data-pipeline="events"][data-tenant="a"]').waitFor();
  await page.getByRole("link", { name: "Tenants" }).click();
  await page.locator('tr[data-tenant="a"]').waitFor();
  await page.locator('tr[data-tenant="b"]').waitFor();
  await snap(page, "tenants");

  step("dark mode");
  const dark = await browser.newContext({ viewport: desktop, colorScheme: "dark" });
  const darkPage = await dark.newPage();
  await darkPage.goto(`${url}/ui/`);
  await darkPage.getByLabel("API token").fill(env("TOKEN_OPERATOR"));
  await darkPage.getByRole("button", { name: "Log in" }).click();
  await darkPage.locator('tr[data-pipeline="flights"]').waitFor();
  const background = await darkPage.evaluate(() => getComputedStyle(document.body).backgroundColor);
  assert.notEqual(background, "rgb(246, 248, 250)", "the dark palette applies");
  await darkPage.screenshot({ path: join(shots, "overview-dark-desktop.png"), fullPage: true });
  await dark.close();

  step("keyboard: the first Tab reaches the skip link, and it moves focus to the content");
  await page.reload();
  await page.locator('tr[data-tenant="a"]').waitFor();
  await page.keyboard.press("Tab");
  assert.equal(await page.evaluate(() => document.activeElement.textContent), "Skip to content");
  await page.keyboard.press("Enter");
  assert.equal(await page.evaluate(() => document.activeElement.id), "main");
  assert.ok(page.url().endsWith("#/tenants"), `the view stays (${page.url()})`);

  await context.close();
  assert.deepEqual(failures, [], "no script errors on any page");
  console.log(`ok: screenshots in ${shots}`);
} catch (error) {
  console.error(`FAILED at step "${stepName}": ${error.stack || error}`);
  if (page) {
    await page.screenshot({ path: join(shots, "failure.png"), fullPage: true }).catch(() => {});
    console.error(`the page at the failure: ${join(shots, "failure.png")}; its text:\n${await page.locator("main").innerText().catch(() => "")}`);
  }
  if (failures.length) console.error(failures.join("\n"));
  process.exitCode = 1;
} finally {
  await browser.close();
}
