// The built-in viewer of `transcode serve`: study list with thumbnails, a
// Cornerstone3D stack viewer that streams the stored HTJ2K frames and decodes
// them in the browser (OpenJPH WebAssembly), and an OpenSeadragon deep zoom on
// the IIIF Image API for large frames. Everything comes from this server.
// With authentication on, a sign-in form first (auth.js).
import { Unauthorized, authHeaders, hasCredential, signedIn, unauthorized } from './auth.js';
import {
  init as coreInit,
  RenderingEngine,
  Enums,
  cache,
  eventTarget,
  ProgressiveRetrieveImages,
  utilities,
} from '@cornerstonejs/core';
import {
  init as toolsInit,
  addTool,
  ToolGroupManager,
  WindowLevelTool,
  StackScrollTool,
  PanTool,
  ZoomTool,
  Enums as ToolEnums,
} from '@cornerstonejs/tools';
import dicomImageLoader, { wadors } from '@cornerstonejs/dicom-image-loader';
import OpenSeadragon from 'openseadragon';

const ROOT = `${location.origin}/dicomweb`;
const IIIF = `${location.origin}/iiif`;
/** Frames larger than this (pixels) get a deep-zoom button. */
const DEEP_ZOOM_PIXELS = 1024 * 1024;
const { imageRetrieveMetadataProvider } = utilities;

/** How frames are fetched: a first byte range then the rest, a stream
 * decoded as it arrives, or whole frames. */
const MODES = {
  range: {
    stages: ProgressiveRetrieveImages.sequentialRetrieveStages.stages,
    retrieveOptions: {
      singleFast: { rangeIndex: 0, initialChunkSize: 64 * 1024 },
      singleFinal: { rangeIndex: -1 },
    },
  },
  stream: {
    stages: ProgressiveRetrieveImages.singleRetrieveStages.stages,
    retrieveOptions: { default: { streaming: true } },
  },
  whole: null,
};

const $ = (id) => document.getElementById(id);
const tag = (item, key) => item[key]?.Value?.[0];
/** A person name for people: `Doe^John` as "Doe, John". */
const name = (value) => String((value && typeof value === 'object' ? value.Alphabetic : value) ?? '')
  .split('^').filter(Boolean).join(', ');

async function json(url) {
  const response = await fetch(url, { headers: { Accept: 'application/dicom+json' } });
  if (response.status === 401) {
    throw new Unauthorized(`${url}: 401`);
  }
  if (!response.ok) {
    throw new Error(`${url}: ${response.status}`);
  }
  return response.json();
}

function card(thumbnail, title, detail, onClick) {
  const el = document.createElement('div');
  el.className = 'card';
  const img = document.createElement('img');
  img.loading = 'lazy';
  img.alt = '';
  showThumbnail(img, thumbnail);
  const text = document.createElement('div');
  text.append(title);
  const small = document.createElement('small');
  small.textContent = detail;
  text.append(small);
  el.append(img, text);
  el.addEventListener('click', () => {
    el.parentElement.querySelectorAll('.active').forEach((other) => other.classList.remove('active'));
    el.classList.add('active');
    onClick();
  });
  return el;
}

/** An <img> sends no Authorization header: with a credential, fetch the thumbnail and show the blob. */
async function showThumbnail(img, url) {
  if (!hasCredential()) {
    img.src = url;
    return;
  }
  const response = await fetch(url);
  if (response.ok) {
    img.src = URL.createObjectURL(await response.blob());
    img.addEventListener('load', () => URL.revokeObjectURL(img.src), { once: true });
  }
}

let renderingEngine;
let viewport;
let deepZoom;
const state = { mode: 'range', study: null, imageIds: [], instances: [], tiles: [] };

async function init() {
  await coreInit();
  toolsInit();
  const base = new URL('.', import.meta.url).href;
  dicomImageLoader.init({ maxWebWorkers: Math.max(1, Math.min(4, navigator.hardwareConcurrency >> 1)),
    wasmBasePath: base, beforeSend: () => authHeaders() });
  for (const tool of [WindowLevelTool, StackScrollTool, PanTool, ZoomTool]) {
    addTool(tool);
  }
  renderingEngine = new RenderingEngine('transcode');
  renderingEngine.enableElement({ viewportId: 'stack', type: Enums.ViewportType.STACK, element: $('stack') });
  viewport = renderingEngine.getViewport('stack');
  const tools = ToolGroupManager.createToolGroup('stack');
  const { MouseBindings } = ToolEnums;
  tools.addTool(WindowLevelTool.toolName);
  tools.addTool(StackScrollTool.toolName);
  tools.addTool(PanTool.toolName);
  tools.addTool(ZoomTool.toolName);
  tools.setToolActive(WindowLevelTool.toolName, { bindings: [{ mouseButton: MouseBindings.Primary }] });
  tools.setToolActive(PanTool.toolName, { bindings: [{ mouseButton: MouseBindings.Auxiliary }] });
  tools.setToolActive(ZoomTool.toolName, { bindings: [{ mouseButton: MouseBindings.Secondary }] });
  tools.setToolActive(StackScrollTool.toolName, { bindings: [{ mouseButton: MouseBindings.Wheel }] });
  tools.addViewport('stack', 'transcode');
  $('stack').addEventListener(Enums.Events.IMAGE_RENDERED, showInfo);
  $('stack').addEventListener(Enums.Events.VOI_MODIFIED, showInfo);
  eventTarget.addEventListener(Enums.Events.IMAGE_LOAD_ERROR, ({ detail }) => {
    if (detail.error?.status === 401) {  // the image loader's XHR (fetch's 401s are caught in auth.js)
      unauthorized();
    }
    const frame = detail.imageId?.replace(/^.*\/instances\//, '') ?? '';
    $('status').textContent = `cannot show ${frame}: ${detail.error?.message ?? detail.error ?? 'load failed'}`;
  });
  $('mode').addEventListener('change', () => setMode($('mode').value));
  $('zoom-close').addEventListener('click', closeDeepZoom);
  new ResizeObserver(() => renderingEngine.resize(true, true)).observe($('stack'));
  const params = new URLSearchParams(location.search);
  setMode(params.get('mode') || 'range');
}

function setMode(mode) {
  if (!(mode in MODES)) {
    throw new Error(`unknown loading mode ${mode}`);
  }
  state.mode = mode;
  $('mode').value = mode;
  imageRetrieveMetadataProvider.clear();
  if (MODES[mode]) {
    imageRetrieveMetadataProvider.add('stack', MODES[mode]);
  }
}

function showInfo() {
  const image = viewport.csImage;
  if (!image) {
    return;
  }
  const index = viewport.getCurrentImageIdIndex();
  const { lower, upper } = viewport.getProperties().voiRange ?? {};
  const windowText = lower === undefined ? '' : `W ${Math.round(upper - lower)} L ${Math.round((upper + lower) / 2)}`;
  const quality = image.imageQualityStatus === Enums.ImageQualityStatus.FULL_RESOLUTION ? 'full' : 'progressive';
  $('stack-info').replaceChildren(...[`image ${index + 1}/${state.imageIds.length}`,
    `${image.columns}x${image.rows}`, windowText, quality].map((text) => {
    const span = document.createElement('span');
    span.textContent = text;
    return span;
  }));
  const zoomable = state.instances[index];
  if (zoomable) {
    const button = document.createElement('button');
    button.type = 'button';
    button.textContent = 'deep zoom';
    button.addEventListener('click', () => openDeepZoom(zoomable));
    $('stack-info').append(button);
  }
}

async function listStudies() {
  const studies = await json(`${ROOT}/studies?includefield=00081030&includefield=00080061`);
  $('studies').replaceChildren(...studies.map((study) => {
    const uid = tag(study, '0020000D');
    const title = name(tag(study, '00100010')) || '(no name)';
    const detail = [tag(study, '00080020'), tag(study, '00081030'), (study['00080061']?.Value ?? []).join('/')]
      .filter(Boolean).join(' · ');
    const el = card(`${ROOT}/studies/${uid}/thumbnail`, title, detail, () => listSeries(uid));
    el.dataset.uid = uid;
    return el;
  }));
  $('status').textContent = `${studies.length} stud${studies.length === 1 ? 'y' : 'ies'}`;
  return studies.map((study) => tag(study, '0020000D'));
}

async function listSeries(study) {
  state.study = study;
  $('studies').querySelectorAll('.card').forEach((el) => el.classList.toggle('active', el.dataset.uid === study));
  const series = await json(`${ROOT}/studies/${study}/series`);
  series.sort((a, b) => (tag(a, '00200011') ?? 0) - (tag(b, '00200011') ?? 0));
  $('series').replaceChildren(...series.map((item) => {
    const uid = tag(item, '0020000E');
    const detail = `${tag(item, '00201209') ?? '?'} instance(s)`;
    const el = card(`${ROOT}/studies/${study}/series/${uid}/thumbnail`,
      `${tag(item, '00080060') ?? ''} ${tag(item, '0008103E') ?? ''}`, detail, () => openSeries(study, uid));
    el.dataset.uid = uid;
    return el;
  }));
  return series.map((item) => tag(item, '0020000E'));
}

/** Load a series into the stack viewport; resolves once its first image is shown. */
async function openSeries(study, series, mode = state.mode) {
  setMode(mode);
  closeDeepZoom();
  if (state.study !== study) {
    await listSeries(study);
  }
  $('series').querySelectorAll('.card').forEach((el) => el.classList.toggle('active', el.dataset.uid === series));
  const metadata = await json(`${ROOT}/studies/${study}/series/${series}/metadata`);
  metadata.sort((a, b) => (tag(a, '00200013') ?? 0) - (tag(b, '00200013') ?? 0));
  const imageIds = [];
  const instances = [];
  for (const instance of metadata) {
    const sop = tag(instance, '00080018');
    const frames = Number(tag(instance, '00280008') ?? 1);
    const large = tag(instance, '00280010') * tag(instance, '00280011') > DEEP_ZOOM_PIXELS;
    for (let frame = 1; frame <= frames; frame++) {
      const imageId = `wadors:${ROOT}/studies/${study}/series/${series}/instances/${sop}/frames/${frame}`;
      wadors.metaDataManager.add(imageId, instance);
      imageIds.push(imageId);
      instances.push(large ? { study, series, sop, frame } : null);
    }
  }
  state.imageIds = imageIds;
  state.instances = instances;
  await viewport.setStack(imageIds, 0);
  viewport.render();
  return imageIds;
}

/** Show frame `index` of the open series; resolves once it is loaded. */
async function showImage(index) {
  await viewport.setImageIdIndex(index);
  viewport.render();
  return state.imageIds[index];
}

/** Wait until the cached image of `imageId` is the full-resolution one. */
async function whenFull(imageId, timeoutMs = 30000) {
  const start = performance.now();
  for (;;) {
    const image = cache.getImage(imageId);
    if (image && (image.imageQualityStatus ?? Enums.ImageQualityStatus.FULL_RESOLUTION)
        === Enums.ImageQualityStatus.FULL_RESOLUTION) {
      return image;
    }
    if (performance.now() - start > timeoutMs) {
      throw new Error(`${imageId} did not reach full resolution in ${timeoutMs} ms`);
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

function tileLogged(url) {
  state.tiles.push(url);
  const item = document.createElement('li');
  item.textContent = url.replace(/^.*\/frames\/\d+\//, '');
  $('tiles').append(item);
  $('tile-count').textContent = String(state.tiles.length);
}

/** Open the IIIF deep zoom of one frame; resolves with its info.json once OpenSeadragon has opened it. */
async function openDeepZoom({ study, series, sop, frame }) {
  closeDeepZoom();
  const info = `${IIIF}/studies/${study}/series/${series}/instances/${sop}/frames/${frame}/info.json`;
  $('stack-pane').hidden = true;
  $('zoom-pane').hidden = false;
  state.tiles = [];
  $('tiles').replaceChildren();
  $('tile-count').textContent = '0';
  deepZoom = OpenSeadragon({
    element: $('zoom'),
    tileSources: info,
    showNavigationControl: false,
    immediateRender: false,
    loadTilesWithAjax: true,
    crossOriginPolicy: 'Anonymous',
    ajaxHeaders: authHeaders(),
  });
  deepZoom.addHandler('tile-loaded', (event) => tileLogged(event.tile.getUrl()));
  await new Promise((resolve, reject) => {
    deepZoom.addOnceHandler('open', resolve);
    deepZoom.addOnceHandler('open-failed', (event) => reject(new Error(event.message)));
  });
  return info;
}

/** Wait until OpenSeadragon has every tile of the current view. */
function deepZoomSettled() {
  return new Promise((resolve) => {
    const item = deepZoom.world.getItemAt(0);
    const done = () => (item.getFullyLoaded() ? resolve() : item.addOnceHandler('fully-loaded-change', done));
    setTimeout(done, 100);
  });
}

/** Zoom to a rectangle of the frame (full-resolution pixels); resolves when
 * its tiles are loaded, with the tiles fetched since and the visible region. */
async function zoomTo(x, y, w, h) {
  await deepZoomSettled();
  const before = state.tiles.length;
  const item = deepZoom.world.getItemAt(0);
  deepZoom.viewport.fitBounds(item.imageToViewportRectangle(x, y, w, h), true);
  await deepZoomSettled();
  const visible = item.viewportToImageRectangle(deepZoom.viewport.getBounds(true));
  return {
    tiles: state.tiles.slice(before),
    visible: { x: visible.x, y: visible.y, w: visible.width, h: visible.height },
  };
}

function closeDeepZoom() {
  if (deepZoom) {
    deepZoom.destroy();
    deepZoom = undefined;
  }
  $('zoom-pane').hidden = true;
  $('stack-pane').hidden = false;
}

/** List the studies, signing in first whenever the server answers 401. */
async function start() {
  for (;;) {
    try {
      return await listStudies();
    } catch (error) {
      if (!(error instanceof Unauthorized)) {
        throw error;
      }
      $('status').textContent = 'sign in to see the studies';  // the form is shown (auth.js saw the 401)
      await signedIn();
    }
  }
}

/** The image the stack viewport shows now (a progressive one may be smaller than the frame). */
const shownImage = () => viewport?.csImage;

/** Where the stack is: its image index and window (lower/upper). */
const stackState = () => ({ index: viewport.getCurrentImageIdIndex(), voi: viewport.getProperties().voiRange });

window.transcodeViewer = {
  shownImage,
  stackState,
  ready: init().then(start).catch((error) => {
    $('status').textContent = `viewer failed to start: ${error.message}`;
    throw error;
  }),
  listSeries,
  openSeries,
  showImage,
  whenFull,
  openDeepZoom,
  deepZoomSettled,
  zoomTo,
  cache,
  events: Enums.Events,
};
