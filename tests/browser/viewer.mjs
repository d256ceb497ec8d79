// Drives the built-in viewer in Debian's chromium (puppeteer-core) and prints
// one JSON object on stdout; the Python tests and benchmarks judge it.
//
//   node viewer.mjs URL OUT_DIR check JOBS_JSON
//     JOBS_JSON: {"modes": [...], "frames": [{"study", "series", "index"}...], "screenshot": bool,
//                 "interact": {"study", "series"} | null,
//                 "zoom": {"study", "series", "sop", "frame", "x", "y", "w", "h"} | null,
//                 "ohif": {"url", "study"} | null, "credential": API key | null,
//                 "signin": bool (a page with no credential, then a wrong one)}
//     -> {"frames": {mode: [pixel summary...]}, "interaction": {before, scrolled, dragged},
//         "zoom": {info, panel, tiles, visible} | null,
//         "ohif": {requests, text, frames: [pixel summary...]} | null, "elsewhere": [URL...],
//         "screenshot": path | null, "signin": {shown, status, cards, refused} | null, "console": [...]}
//   node viewer.mjs URL OUT_DIR first-image JOBS_JSON
//     JOBS_JSON: {"modes": [...], "study", "series", "repeat": n}
//     -> {"runs": [{"mode", "ms", "bytes", "requests", "columns", "rows"}...]}
import puppeteer from 'puppeteer-core';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const [url, outDir, command, jobsJson] = process.argv.slice(2);
const jobs = JSON.parse(jobsJson);
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const profile = mkdtempSync(join(tmpdir(), 'transcode-chromium-'));
const consoleLines = [];
/** Requests of the built-in viewer's pages to anywhere but this server (a CDN, say). */
const elsewhere = [];

const browser = await puppeteer.launch({
  executablePath: CHROMIUM,
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    `--user-data-dir=${profile}`],
});

/** The decoded pixels of a cached image, as the Python test compares them:
 * values as float64 (SHA-256 of their little-endian bytes), colour without
 * alpha, with the rescale Cornerstone applied. Runs in the page. */
async function pixelSummary(cache, imageId) {
  const image = cache.getImage(imageId);
  let values = image.getPixelData();
  const samples = values.length / (image.rows * image.columns);
  if (image.color && samples === 4) {
    values = values.filter((_, i) => i % 4 !== 3);
  }
  const float = Float64Array.from(values);
  const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', float.buffer));
  const scaling = image.preScale?.scaled ? image.preScale.scalingParameters : null;
  return {
    imageId,
    rows: image.rows,
    columns: image.columns,
    samples: image.color ? 3 : 1,
    type: values.constructor.name,
    transferSyntax: image.transferSyntaxUID ?? null,
    scaled: Boolean(scaling),
    slope: scaling?.rescaleSlope ?? 1,
    intercept: scaling?.rescaleIntercept ?? 0,
    sha256: Array.from(digest, (b) => b.toString(16).padStart(2, '0')).join(''),
  };
}

/** `pixelSummary` of `imageId` in the image cache `cacheExpression` of the page. */
function summarize(page, cacheExpression, imageId) {
  return page.evaluate(`(${pixelSummary})(${cacheExpression}, ${JSON.stringify(imageId)})`);
}

/** A fresh page on the viewer in `mode`, with the HTTP cache off: frames are
 * served immutable, and each mode must fetch them itself. */
async function open(mode) {
  const page = await browser.newPage();
  await page.setViewport({ width: 1280, height: 800 });
  await page.setCacheEnabled(false);
  page.on('console', (msg) => consoleLines.push(`${msg.type()}: ${msg.text()}`));
  page.on('request', (request) => {
    if (!request.url().startsWith(`${url}/`) && !/^(data|blob):/.test(request.url())) {
      elsewhere.push(request.url());
    }
  });
  page.on('pageerror', (error) => consoleLines.push(`pageerror: ${error.message}`));
  await page.goto(`${url}/?mode=${mode}`, { waitUntil: 'load' });
  if (jobs.credential) {  // authentication on: the sign-in form comes first
    await signIn(page, jobs.credential);
  }
  await page.evaluate(() => window.transcodeViewer.ready);
  return page;
}

/** Wait for the sign-in form, and submit `credential` in it. */
async function signIn(page, credential) {
  await page.waitForSelector('#login:not([hidden])', { timeout: 30000 });
  await page.type('#credential', credential);
  await page.click('#login button[type=submit]');
}

/** A page opened with no credential: is the form shown (and the rest
 * intact)? Then a wrong credential: what does the form say? */
async function signinPage() {
  const page = await browser.newPage();
  page.on('pageerror', (error) => consoleLines.push(`pageerror: ${error.message}`));
  await page.goto(`${url}/`, { waitUntil: 'load' });
  await page.waitForSelector('#login:not([hidden])', { timeout: 30000 });
  const seen = () => page.evaluate(() => ({
    shown: !document.getElementById('login').hidden,
    status: document.getElementById('status').textContent,
    cards: document.querySelectorAll('.card').length,
    error: document.getElementById('login-error').textContent,
  }));
  const first = await seen();
  await signIn(page, 'tck_000000000000_wrong');
  await page.waitForFunction(() => document.getElementById('login-error').textContent !== '', { timeout: 30000 });
  const refused = await seen();
  await page.screenshot({ path: join(outDir, 'signin.png') });
  await page.close();
  return { ...first, refused };
}

async function check() {
  const result = { frames: {}, zoom: null, screenshot: null, signin: null };
  if (jobs.signin) {
    result.signin = await signinPage();
  }
  for (const mode of jobs.modes) {
    const page = await open(mode);
    const summaries = [];
    for (const { study, series, index } of jobs.frames) {
      const imageId = await page.evaluate(async (s, r, i, m) => {
        const v = window.transcodeViewer;
        const ids = await v.openSeries(s, r, m);
        await v.showImage(i);
        await v.whenFull(ids[i]);
        return ids[i];
      }, study, series, index, mode);
      summaries.push(await summarize(page, 'window.transcodeViewer.cache', imageId));
    }
    result.frames[mode] = summaries;
    if (jobs.interact && mode === jobs.modes[0]) {
      result.interaction = await interact(page, jobs.interact);
    }
    if (jobs.screenshot && mode === jobs.modes[0]) {
      const first = jobs.frames[0];
      await page.evaluate((s, r) => window.transcodeViewer.openSeries(s, r), first.study, first.series);
      await new Promise((resolve) => setTimeout(resolve, 500));
      result.screenshot = join(outDir, 'viewer.png');
      await page.screenshot({ path: result.screenshot });
    }
    await page.close();
  }
  if (jobs.zoom) {
    result.zoom = await zoom(jobs.zoom);
  }
  if (jobs.ohif) {
    result.ohif = await ohif(jobs.ohif);
  }
  return result;
}

/** Scroll the wheel twice over the stack, then drag with the left button:
 * the stack's state before, after the wheel and after the drag. */
async function interact(page, { study, series }) {
  const state = () => page.evaluate(() => window.transcodeViewer.stackState());
  await page.evaluate((s, r) => window.transcodeViewer.openSeries(s, r), study, series);
  const box = await (await page.$('#stack')).boundingBox();
  const [x, y] = [box.x + box.width / 2, box.y + box.height / 2];
  const before = await state();
  await page.mouse.move(x, y);
  for (let i = 0; i < 2; i++) {
    await page.mouse.wheel({ deltaY: 120 });
    await new Promise((resolve) => setTimeout(resolve, 300));
  }
  await page.evaluate(() => window.transcodeViewer.whenFull(window.transcodeViewer.shownImage().imageId));
  const scrolled = await state();
  await page.mouse.down({ button: 'left' });
  await page.mouse.move(x + 120, y + 60, { steps: 10 });
  await page.mouse.up({ button: 'left' });
  const dragged = await state();
  return { before, scrolled, dragged };
}

/** Open the deep zoom of a frame, then zoom into a rectangle of it; report
 * the tiles fetched for that rectangle and the region then visible. */
async function zoom(target) {
  const page = await open('whole');
  const result = await page.evaluate(async (t) => {
    const v = window.transcodeViewer;
    const info = await v.openDeepZoom(t);
    await v.deepZoomSettled();
    const zoomed = await v.zoomTo(t.x, t.y, t.w, t.h);
    const panel = Number(document.getElementById('tile-count').textContent);
    return { info, panel, ...zoomed };
  }, target);
  await page.screenshot({ path: join(outDir, 'zoom.png') });
  await page.close();
  return result;
}

/** Open OHIF's study list from the same origin, then a study in its
 * viewer; report the requests it made and the list's text. */
async function ohif({ url: ohifUrl, study }) {
  const page = await browser.newPage();
  await page.setViewport({ width: 1280, height: 800 });
  await page.setCacheEnabled(false);
  const requests = [];
  page.on('request', (request) => requests.push({ method: request.method(), url: request.url() }));
  page.on('pageerror', (error) => consoleLines.push(`ohif pageerror: ${error.message}`));
  await page.goto(ohifUrl, { waitUntil: 'networkidle0', timeout: 60000 });
  const text = await page.evaluate(() => document.body.innerText);
  await page.goto(`${ohifUrl}viewer?StudyInstanceUIDs=${study}`, { waitUntil: 'networkidle0', timeout: 120000 });
  await page.screenshot({ path: join(outDir, 'ohif.png') });
  // The frames OHIF's viewports show, from its Cornerstone3D (window.cornerstone).
  const shown = await page.evaluate(() => window.cornerstone.getRenderingEngines()
    .flatMap((engine) => engine.getViewports()).map((viewport) => viewport.getCurrentImageId?.()).filter(Boolean));
  const frames = [];
  for (const imageId of shown) {
    frames.push(await summarize(page, 'window.cornerstone.cache', imageId));
  }
  await page.close();
  return { requests, text, frames };
}

/** Milliseconds and bytes from opening a series to its first rendered image. */
async function firstImage() {
  const runs = [];
  for (let i = 0; i < (jobs.repeat ?? 1); i++) {
    for (const mode of jobs.modes) {
      const page = await open(mode);
      runs.push(await page.evaluate(async (s, r, m) => {
        const v = window.transcodeViewer;
        const element = document.getElementById('stack');
        performance.clearResourceTimings();
        const start = performance.now();
        const rendered = new Promise((resolve) => {
          const seen = () => {
            const image = v.shownImage();
            if (image) {
              element.removeEventListener(v.events.IMAGE_RENDERED, seen);
              resolve({ at: performance.now(), columns: image.columns, rows: image.rows });
            }
          };
          element.addEventListener(v.events.IMAGE_RENDERED, seen);
        });
        v.openSeries(s, r, m);
        const shown = await rendered;
        const frames = performance.getEntriesByType('resource')
          .filter((e) => e.name.includes('/frames/') && e.responseEnd <= shown.at);
        return {
          mode: m,
          ms: shown.at - start,
          bytes: frames.reduce((sum, e) => sum + e.encodedBodySize, 0),
          requests: frames.length,
          columns: shown.columns,
          rows: shown.rows,
        };
      }, jobs.study, jobs.series, mode));
      await page.close();
    }
  }
  return { runs };
}

try {
  const result = command === 'check' ? await check() : await firstImage();
  result.console = consoleLines;
  result.elsewhere = elsewhere;
  process.stdout.write(`${JSON.stringify(result)}\n`);
} finally {
  await browser.close();
  rmSync(profile, { recursive: true, force: true });
}
