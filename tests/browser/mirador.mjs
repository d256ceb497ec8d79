// Opens a IIIF manifest in Mirador (its prebuilt bundle, as a site embeds it)
// in Debian's chromium (puppeteer-core) and prints one JSON object on stdout
// for tests/test_iiif_mirador.py to judge.
//
//   node mirador.mjs PAGE_URL OUT_DIR
//     -> {"requests": [{"url", "status"}...], "zoomed": [the same, made after the zoom],
//         "text": page text, "screenshot": path, "console": [...]}
//
// It waits (at most 90 s) until the page has received an info.json and at
// least one image from a IIIF image service, then 2 s more for the rest.
// Then it zooms in with the mouse wheel over the upper left of the image,
// as a reader would, and waits until no image has come for 2 s (at most 30 s).
import puppeteer from 'puppeteer-core';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const [pageUrl, outDir] = process.argv.slice(2);
const profile = mkdtempSync(join(tmpdir(), 'transcode-chromium-'));
const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    `--user-data-dir=${profile}`],
});
const requests = [];
const consoleLines = [];
try {
  const page = await browser.newPage();
  await page.setViewport({ width: 1200, height: 900 });
  page.on('console', (message) => consoleLines.push(`${message.type()}: ${message.text()}`));
  page.on('pageerror', (error) => consoleLines.push(`pageerror: ${error.message}`));
  page.on('response', (response) => requests.push({ url: response.url(), status: response.status() }));
  await page.goto(pageUrl, { waitUntil: 'load' });
  const deadline = Date.now() + 90_000;
  const seen = () => requests.some((r) => r.url.endsWith('/info.json') && r.status === 200)
    && requests.some((r) => /\/iiif\/.*\/0\/default\.jpg$/.test(r.url) && r.status === 200);
  while (!seen() && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
  await new Promise((resolve) => setTimeout(resolve, 2000));
  const screenshot = join(outDir, 'mirador.png');
  await page.screenshot({ path: screenshot });
  const text = await page.evaluate(() => document.body.innerText);
  const before = requests.length;
  const canvas = await page.$('.openseadragon-canvas');
  const box = await canvas.boundingBox();
  await page.mouse.move(box.x + box.width * 0.4, box.y + box.height * 0.3);
  for (let step = 0; step < 6; step += 1) {
    await page.mouse.wheel({ deltaY: -400 });
    await new Promise((resolve) => setTimeout(resolve, 300));
  }
  const quietUntil = Date.now() + 30_000;
  let last = requests.length;
  let lastChange = Date.now();
  while (Date.now() < quietUntil && Date.now() - lastChange < 2000) {
    await new Promise((resolve) => setTimeout(resolve, 250));
    if (requests.length !== last) {
      last = requests.length;
      lastChange = Date.now();
    }
  }
  await page.screenshot({ path: join(outDir, 'mirador-zoomed.png') });
  const zoomed = requests.slice(before);
  console.log(JSON.stringify({ requests, zoomed, text, screenshot, console: consoleLines }));
} finally {
  await browser.close();
  rmSync(profile, { recursive: true, force: true });
}
