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
const VIEWPORT = { width: 1280, height: 720 };
let context = await browser.newContext({ viewport: VIEWPORT });
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

// Runs in the page (CDP evaluation, which the page's CSP does not govern): what a person with
// a small screen, low vision or only a keyboard would meet, as a list of sentences.
// - no horizontal scroll; every control and link shown, on screen, not covered, and a target
//   of at least 44x44 CSS px (WCAG 2.5.5);
// - WCAG AA contrast from computed styles: 4.5:1 for text, 3:1 for large text (24 px, or
//   18.66 px bold) (1.4.3); 3:1 for a control's boundary and its focus outline against what
//   is around it (1.4.11).
function AUDIT() {
  const problems = [];
  const root = document.documentElement;
  if (root.scrollWidth > root.clientWidth) {
    problems.push(`horizontal scroll: scrollWidth ${root.scrollWidth} > ${root.clientWidth}`);
  }
  const parse = (text) => {
    const m = /^rgba?\(([^)]*)\)$/.exec(text);
    if (!m) return null;
    const p = m[1].split(/[\s,/]+/).filter(Boolean).map(Number);
    return [p[0], p[1], p[2], p.length > 3 ? p[3] : 1];
  };
  const over = (top, bottom) => {
    const a = top[3];
    return [0, 1, 2].map((i) => top[i] * a + bottom[i] * (1 - a)).concat(1);
  };
  const describe = (el) => {
    const text = (el.innerText || el.value || el.getAttribute("aria-label") || "").trim();
    return `<${el.tagName.toLowerCase()}${el.id ? "#" + el.id : ""}${
      el.className ? "." + el.className : ""
    }> "${text.slice(0, 30)}"`;
  };
  // The opaque colour behind an element: the canvas, then each ancestor's background.
  const backdrop = (el) => {
    const chain = [];
    for (let e = el; e; e = e.parentElement) chain.unshift(e);
    let colour = [255, 255, 255, 1];
    for (const e of chain) {
      const style = getComputedStyle(e);
      if (style.backgroundImage !== "none") return null;
      const bg = parse(style.backgroundColor);
      if (bg === null) return null;
      colour = over(bg, colour);
    }
    return colour;
  };
  const luminance = (c) => {
    const lin = c.slice(0, 3).map((v) => {
      const s = v / 255;
      return s <= 0.04045 ? s / 12.92 : ((s + 0.055) / 1.055) ** 2.4;
    });
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2];
  };
  const ratio = (a, b) => {
    const [x, y] = [luminance(a), luminance(b)].sort((p, q) => q - p);
    return (x + 0.05) / (y + 0.05);
  };
  const shown = (el) =>
    el.getClientRects().length > 0 && getComputedStyle(el).visibility === "visible";
  const controls = "input:not([type=hidden]), button, select, textarea";
  // Text: every element with text of its own, and the value shown in a control.
  for (const el of document.body.querySelectorAll("*")) {
    const own = [...el.childNodes].some((n) => n.nodeType === 3 && n.data.trim() !== "");
    if (!(own || el.matches(controls)) || !shown(el)) continue;
    const style = getComputedStyle(el);
    const colour = parse(style.color);
    const behind = backdrop(el);
    if (colour === null || behind === null) {
      problems.push(`cannot compute the contrast of ${describe(el)}`);
      continue;
    }
    const size = parseFloat(style.fontSize);
    const large = size >= 24 || (size >= 18.66 && Number(style.fontWeight) >= 700);
    const needed = large ? 3 : 4.5;
    const got = ratio(over(colour, behind), behind);
    if (got < needed) {
      problems.push(`text contrast ${got.toFixed(2)} < ${needed} of ${describe(el)}`);
    }
  }
  const before = document.activeElement;
  for (const el of document.body.querySelectorAll(`a[href], ${controls}`)) {
    if (!shown(el)) {
      problems.push(`not shown: ${describe(el)}`);
      continue;
    }
    el.scrollIntoView({ block: "center", inline: "center" });
    const box = el.getBoundingClientRect();
    if (box.width < 44 || box.height < 44) {
      problems.push(
        `target ${box.width.toFixed(0)}x${box.height.toFixed(0)} < 44x44: ${describe(el)}`,
      );
    }
    if (box.left < 0 || box.right > root.clientWidth) {
      problems.push(`off screen (x ${box.left.toFixed(0)}-${box.right.toFixed(0)}): ${describe(el)}`);
    }
    const hit = document.elementFromPoint(box.left + box.width / 2, box.top + box.height / 2);
    if (hit === null || !(hit === el || el.contains(hit) || (el.labels && [...el.labels].includes(hit)))) {
      problems.push(`covered by ${hit ? describe(hit) : "nothing"}: ${describe(el)}`);
    }
    const around = backdrop(el.parentElement);
    const style = getComputedStyle(el);
    if (el.matches(controls) && around !== null) {
      // The control's boundary: its border, or its own fill.
      const border = parseFloat(style.borderTopWidth) > 0 ? parse(style.borderTopColor) : null;
      const fill = parse(style.backgroundColor);
      const edges = [border, fill && fill[3] > 0 ? fill : null].filter((c) => c !== null);
      const best = Math.max(0, ...edges.map((c) => ratio(over(c, around), around)));
      if (best < 3) {
        problems.push(`boundary contrast ${best.toFixed(2)} < 3 of ${describe(el)}`);
      }
    }
    el.focus();
    const focused = getComputedStyle(el);
    const ring = parse(focused.outlineColor);
    if (focused.outlineStyle === "none" || parseFloat(focused.outlineWidth) < 2 || ring === null) {
      problems.push(`no focus outline of 2 px or more: ${describe(el)}`);
    } else if (around !== null && ratio(over(ring, around), around) < 3) {
      const got = ratio(over(ring, around), around).toFixed(2);
      problems.push(`focus outline contrast ${got} < 3 of ${describe(el)}`);
    }
  }
  if (before instanceof HTMLElement && before !== document.body) before.focus();
  else if (document.activeElement instanceof HTMLElement) document.activeElement.blur();
  window.scrollTo(0, 0);
  return problems;
}

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
  async set_content({ html }) {
    await page.setContent(html);
    return state();
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
  async audit({ name, dir }) {
    // The page at a desktop and a narrow width, light and dark: a screenshot each, and what
    // AUDIT finds wrong in it. The focus goes back where it was.
    const shots = [];
    const problems = [];
    for (const width of [1280, 360]) {
      await page.setViewportSize({ width, height: 740 });
      for (const colorScheme of ["light", "dark"]) {
        await page.emulateMedia({ colorScheme });
        const path = `${dir}/${name}-${width}px-${colorScheme}.png`;
        await page.screenshot({ path, fullPage: true });
        shots.push(path);
        for (const problem of await page.evaluate(AUDIT)) {
          problems.push(`${width}px ${colorScheme}: ${problem}`);
        }
      }
    }
    await page.setViewportSize(VIEWPORT);
    await page.emulateMedia({ colorScheme: null });
    return { ...(await state()), shots, problems };
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
    context = await browser.newContext({ viewport: VIEWPORT });
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
