// Builds the viewer into transcode/server/viewer_dist/ (committed, so that
// `pip install` serves it without node): `npm ci && npm run build` here.
// Writes SOURCES.sha256, the digest of every input below, which
// tests/test_viewer_bundle.py recomputes to prove the bundle is current.
import { build } from 'esbuild';
import { createHash } from 'node:crypto';
import { copyFileSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const out = process.argv[2] ?? join(here, '..', 'transcode', 'server', 'viewer_dist');
const modules = join(here, 'node_modules');

/** Inputs of the build, in a fixed order: what SOURCES.sha256 covers. */
function sources() {
  const walk = (dir) => readdirSync(dir).sort().flatMap((name) => {
    const path = join(dir, name);
    return statSync(path).isDirectory() ? walk(path) : [path];
  });
  return [...walk(join(here, 'src')), ...['build.mjs', 'package.json', 'package-lock.json'].map((f) => join(here, f))];
}

function digest() {
  const hash = createHash('sha256');
  for (const path of sources()) {
    hash.update(`${relative(here, path)}\0`);
    hash.update(readFileSync(path));
    hash.update('\0');
  }
  return hash.digest('hex');
}

// The server sends transcoded frames as HTJ2K and kept lossy JPEG baseline as
// JPEG: those two codecs are bundled. JPEG-LS, JPEG 2000 and JPEG XL frames
// (other kept instances) fail to decode with this message instead of adding
// 3 MB of WebAssembly.
const unbundled = /^@cornerstonejs\/codec-(charls|openjpeg|libjxl)\//;
const stubCodecs = {
  name: 'stub-codecs',
  setup(b) {
    b.onResolve({ filter: unbundled }, (args) => ({ path: args.path, namespace: 'stub-codec' }));
    b.onLoad({ filter: /.*/, namespace: 'stub-codec' }, (args) => ({
      contents: `export default () => Promise.reject(new Error(${JSON.stringify(
        `${args.path} is not bundled with the transcode viewer`)}));`,
    }));
  },
};

/** The licence of every npm package with code in the bundles (MIT, BSD and
 * the like ask for their notice to travel with the code). */
function notices(results) {
  const packages = new Set();
  for (const { metafile } of results) {
    for (const input of Object.keys(metafile.inputs)) {
      const match = input.match(/node_modules\/((?:@[^/]+\/)?[^/]+)\//g);
      if (match) {
        packages.add(match.at(-1).slice('node_modules/'.length, -1));
      }
    }
  }
  return [...packages].sort().map((name) => {
    const dir = join(modules, name);
    const { version, license } = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8'));
    const file = readdirSync(dir).find((f) => /^(licen[sc]e|copying)/i.test(f));
    const text = file ? readFileSync(join(dir, file), 'utf8').trim() : `(no licence file; package.json says ${license})`;
    return `${name} ${version} (${license})\n\n${text}\n`;
  }).join(`\n${'-'.repeat(72)}\n\n`);
}

const common = {
  bundle: true,
  minify: true,
  format: 'esm',
  target: 'es2022',
  legalComments: 'linked',
  logLevel: 'warning',
  define: { 'process.env.NODE_ENV': '"production"', global: 'globalThis' },
  // Node built-ins pulled in by vtk.js's dependencies, for the browser.
  alias: { events: join(modules, 'events', 'events.js'), url: join(modules, 'url', 'url.js') },
  // Emscripten's node branch, never taken in a browser.
  external: ['fs', 'path', 'crypto', 'module', 'worker_threads'],
  plugins: [stubCodecs],
};

rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });
const builds = [
  await build({ ...common, metafile: true, entryPoints: { viewer: join(here, 'src', 'main.js') }, outdir: out }),
  await build({
    ...common,
    metafile: true,
    entryPoints: { decodeImageFrameWorker: join(modules, '@cornerstonejs/dicom-image-loader/dist/esm/decodeImageFrameWorker.js') },
    outdir: out,
  }),
];
copyFileSync(join(modules, '@cornerstonejs/codec-openjph/dist/openjphjs.wasm'), join(out, 'openjphjs.wasm'));
copyFileSync(join(modules, '@cornerstonejs/codec-libjpeg-turbo-8bit/dist/libjpegturbowasm_decode.wasm'),
  join(out, 'libjpegturbowasm_decode.wasm'));
copyFileSync(join(here, 'src', 'index.html'), join(out, 'index.html'));
copyFileSync(join(here, 'src', 'viewer.css'), join(out, 'viewer.css'));
writeFileSync(join(out, 'THIRD_PARTY_LICENSES.txt'), notices(builds));
writeFileSync(join(out, 'SOURCES.sha256'), `${digest()}\n`);
const sizes = readdirSync(out).sort().map((f) => `${f} ${statSync(join(out, f)).size}`);
console.log(sizes.join('\n'));
