// Headless Chromium under playwright-core, driven one JSON command a line on stdin; one
// JSON answer a line on stdout. argv: the Chromium executable.
// Pages at https://client.example/ and https://app.example/ are the Matrix clients: nothing
// is fetched there (the names resolve nowhere); a navigation there ends a journey, and its
// URL (with the code or login token) is the answer.
import { chromium } from "playwright-core";
import { createInterface } from "node:readline";

const browser = await chromium.launch({
  executablePath: process.argv[2],
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--host-resolver-rules=MAP client.example ~NOTFOUND, MAP app.example ~NOTFOUND",
  ],
});
let context = await browser.newContext();
const CLIENTS = ["https://client.example/", "https://app.example/"];
let page;
let lastNavigation = "";
const consoleErrors = [];

async function newPage() {
  page = await context.newPage();
  page.setDefaultTimeout(20000);
  page.on("console", (message) => {
    if (message.type() === "error") consoleErrors.push(message.text());
  });
  page.on("request", (request) => {
    if (request.isNavigationRequest() && request.frame() === page.mainFrame()) {
      lastNavigation = request.url();
    }
  });
}

// Waits for the navigation ``action`` starts; one that goes to a client ends there.
async function navigating(action) {
  lastNavigation = "";
  let failure = null;
  try {
    await Promise.all([page.waitForNavigation(), action()]);
  } catch (error) {
    failure = error;
  }
  if (CLIENTS.some((c) => lastNavigation.startsWith(c))) {
    // The browser shows its error page for the client's address (which resolves nowhere);
    // it must have loaded, or it would interrupt the next navigation.
    const reached = lastNavigation;
    try {
      await page.waitForURL(/^chrome-error:/, { timeout: 5000 });
      await page.waitForLoadState();
    } catch {}
    return { url: reached, title: "client" };
  }
  if (failure !== null) throw failure;
  return state();
}
await newPage();

async function state() {
  return { url: page.url(), title: await page.title() };
}

const commands = {
  async goto({ url }) {
    return navigating(() => page.goto(url));
  },
  async fill({ selector, value }) {
    await page.fill(selector, value);
    return state();
  },
  async click({ selector }) {
    // A click that submits a form or follows a link: wait for the page it leads to.
    return navigating(() => page.click(selector));
  },
  async text() {
    return { ...(await state()), text: await page.innerText("body") };
  },
  async html() {
    return { ...(await state()), html: await page.content() };
  },
  async press({ key }) {
    await page.keyboard.press(key);
    const focused = await page.evaluate(() => {
      const el = document.activeElement;
      return el ? { tag: el.tagName, id: el.id, name: el.getAttribute("name") } : null;
    });
    return { ...(await state()), focused };
  },
  async press_and_wait({ key }) {
    return navigating(() => page.keyboard.press(key));
  },
  async unlabelled() {
    // Form controls a person cannot name: no <label for>, no aria-label, not hidden.
    const missing = await page.evaluate(() =>
      [...document.querySelectorAll("input, select, textarea")]
        .filter((el) => el.type !== "hidden")
        .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute("aria-label"))
        .map((el) => el.name || el.id),
    );
    return { ...(await state()), missing };
  },
  async watch_auth_done() {
    // spec: the page that ends a UIA fallback calls window.onAuthDone when the embedding
    // app defines it; here it marks the page's title (if the page's CSP lets its script run).
    await context.addInitScript(() => {
      window.onAuthDone = () => {
        document.title = "onAuthDone called";
      };
    });
    return {};
  },
  async console_errors() {
    return { errors: consoleErrors.splice(0) };
  },
  async new_context() {
    await context.close();
    context = await browser.newContext();
    await newPage();
    return {};
  },
};

const lines = createInterface({ input: process.stdin });
console.log(JSON.stringify({ ready: true }));
for await (const line of lines) {
  const command = JSON.parse(line);
  try {
    const result = await commands[command.op](command);
    console.log(JSON.stringify({ ok: true, ...result }));
  } catch (error) {
    let where = {};
    try {
      where = await state();
    } catch {}
    console.log(JSON.stringify({ ok: false, error: String(error), ...where }));
  }
}
await browser.close();
