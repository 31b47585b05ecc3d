// The Dataset tab's map (vlviz/ui/dataset_tab.py): every pair's image and caption as points of one
// regl-scatterplot, inside a gr.HTML whose js_on_load calls `mountDatasetMap`.
//
// Props the Python side sets: `points` (the URL of the session's points: x, y and a colour value per point,
// raw little-endian float32, `count` each), `count`, `colour_kind` ("categorical": image or caption, "clusters":
// the map's clusters, or "continuous"), `token`
// (the session's map token: hover asks the server with it), `highlight` (point indices a search found), `role`
// ("main", or "linked": the same pairs embedded by another model, drawn beside it; hovering a point in one
// highlights the same point in the other), `preview` (a larger map is drawn first from at most this many of its
// points, then whole), `cluster_colours` (a colour per cluster, in the order of the legend's).
// Zoomed in (the view at most half the map's side, at most ZOOMED_IN_IMAGES image points in it), the map draws
// thumbnails over its image points, none overlapping another, asked of the server (`dataset_thumbnails`) and kept
// while the page lives.
// The page answers a lasso with trigger("select", {index, value}): the number of points and their indices as JSON
// (in the event, not in `props.value`, whose update may reach the server after the event that reads it).
import createScatterplot from "regl-scatterplot";

export { createScatterplot };

const CATEGORY_COLOURS = ["#0072B2", "#E69F00"]; // image, caption (Okabe-Ito: distinguishable to colour-blind eyes)
// Viridis in 16 steps, for a continuous column scaled to [0, 1] on the server.
const RAMP = [
  "#440154", "#481a6c", "#472f7d", "#414487", "#39568c", "#31688e", "#2a788e", "#23888e",
  "#1f988b", "#22a884", "#35b779", "#54c568", "#7ad151", "#a5db36", "#d2e21b", "#fde725",
];
const MAX_SENT_POINTS = 20000; // a lasso's points sent to the server; it keeps the first pairs of them anyway
const ZOOMED_IN_SPAN = 1; // the view's shorter side, in the map's [-1, 1] units, from which on thumbnails are drawn
const ZOOMED_IN_IMAGES = 20000; // ... and the most image points in view
const THUMBNAIL_PX = 40;
const THUMBNAIL_GAP_PX = 4; // between two thumbnails' edges
const MAX_THUMBNAILS = 60; // drawn at once (the server answers at most 64 a call)
const MAX_KEPT_THUMBNAILS = 3000; // data URLs the page keeps (about 3 KB each)
const THUMBNAIL_DELAY_MS = 200; // after the view last moved

/** A scale regl-scatterplot keeps up to date with the view (it sets `domain` to what is in view, in [-1, 1]). */
function viewScale(range) {
  let domain = [-1, 1];
  return {
    domain(value) {
      if (value === undefined) return domain;
      domain = value;
      return this;
    },
    range(value) {
      if (value === undefined) return range;
      range = value;
      return this;
    },
  };
}

function escapeHtml(text) {
  const div = document.createElement("div");
  div.textContent = text;
  return div.innerHTML;
}

/** The points of a map, the whole map's and, for one of more than `preview` points drawn for the first time, a
 * preview of at most `preview` of them (every k-th, `?preview=` on the points route): both asked for at once, so
 * the preview is drawn while the rest (24 MB at a million pairs) still arrives. */
function askPoints(url, count, preview) {
  const asked = { url, points: fetchPoints(url, count) };
  if (preview > 0 && count > preview) {
    const shown = Math.ceil(count / Math.ceil(count / preview)); // every k-th point (the server's rule)
    asked.preview = fetchPoints(`${url}${url.includes("?") ? "&" : "?"}preview=${preview}`, shown);
  }
  for (const promise of [asked.points, asked.preview]) promise?.catch(() => {}); // reported by the draw awaiting it
  return asked;
}

async function fetchPoints(url, count) {
  const response = await fetch(url, { credentials: "same-origin" });
  if (!response.ok) throw new Error(`the map's points were refused (${response.status})`);
  const values = new Float32Array(await response.arrayBuffer());
  if (values.length !== 3 * count) throw new Error(`expected ${3 * count} values, got ${values.length}`);
  return { x: values.subarray(0, count), y: values.subarray(count, 2 * count), valueA: values.subarray(2 * count) };
}

/** Draw the map in `element` (the gr.HTML's root), redraw when `points` changes, highlight searches, report lassos. */
export function mountDatasetMap(element, props, trigger, server, watch) {
  const canvas = element.querySelector("canvas");
  const tip = element.querySelector(".vlviz-map-tip");
  const status = element.querySelector(".vlviz-map-status");
  const thumbnailLayer = element.querySelector(".vlviz-map-thumbnails");
  const frame = canvas.parentElement; // the plot sets the canvas's size in pixels; the frame follows the layout
  // The first points are asked for before WebGL is set up (hundreds of milliseconds in software): they arrive meanwhile.
  let early = props.points && props.count ? askPoints(props.points, props.count, props.preview) : null;
  const { width, height } = frame.getBoundingClientRect();
  const plot = createScatterplot({
    canvas,
    width: Math.max(width, 100),
    height: Math.max(height, 100),
    pointSize: 3,
    pointSizeSelected: 4,
    opacityInactiveScale: 0.6,
    // zoomed out, dense clouds of points turn translucent, so the map reads as a density; zoomed in, each point
    // is opaque (regl-scatterplot's density-based opacity, after Ricky Reusser's 2-D point-cloud opacity)
    opacityBy: "density",
    colorBy: "valueA",
    lassoOnLongPress: true,
    xScale: viewScale([0, width]),
    yScale: viewScale([height, 0]),
  });
  const state = { plot, drawn: 0, previewed: 0, hovered: null, linkedHover: null, error: null, thumbnails: [] };
  canvas.vlvizMap = state; // tests read the drawn count and the selection, and drive the plot
  window.vlvizMaps = window.vlvizMaps || {};
  window.vlvizMaps[props.role] = state;
  const partner = () => {
    const other = window.vlvizMaps[props.role === "main" ? "linked" : "main"];
    return other && other !== state && other.drawn === state.drawn && other.drawn > 0 ? other : null;
  };
  const showInPartner = (index) => {
    const other = partner();
    if (!other) return;
    other.linkedHover = index;
    other.plot.hover(index ?? -1, { showReticleOnce: index !== null, preventEvent: true });
  };
  // The points lie in [-1, 1]²; a canvas narrower than tall would cut the sides off, so the view fits the square.
  // The camera is set before the first draw (it needs no points): drawing then takes one frame, not a second one
  // for the fit (hundreds of milliseconds each in software).
  const fit = () => plot.zoomToArea({ x: -1, y: -1, width: 2, height: 2 });
  fit();
  new ResizeObserver(() => {
    const box = frame.getBoundingClientRect();
    if (box.width <= 0 || box.height <= 0) return;
    plot.set({ width: box.width, height: box.height });
    requestAnimationFrame(fit); // after the plot took its new size
  }).observe(frame); // a map drawn before its partner appeared beside it narrows with it

  const draw = async () => {
    const url = props.points;
    if (!url || !props.count) {
      plot.clear(); // unlinked: this map is hidden, and is no partner of the other
      Object.assign(state, { drawn: 0, previewed: 0, points: null });
      return;
    }
    try {
      const asked = early?.url === url ? early : askPoints(url, props.count, state.drawn ? 0 : props.preview);
      early = null;
      // the clusters' colours are the Python side's, which its legend names
      const palettes = { categorical: CATEGORY_COLOURS, clusters: props.cluster_colours, continuous: RAMP };
      const kind = Object.hasOwn(palettes, props.colour_kind) ? props.colour_kind : "continuous";
      const options = { zDataType: kind === "continuous" ? "continuous" : "categorical" };
      plot.set({ pointColor: palettes[kind] });
      if (asked.preview) {
        await plot.draw(await asked.preview, options);
        state.previewed = props.count;
        await new Promise((painted) => requestAnimationFrame(() => requestAnimationFrame(painted)));
        state.shownAt ??= performance.now(); // the page's first map, in ms from navigation (benches read it)
      }
      const points = await asked.points;
      await plot.draw(points, options);
      if (state.points?.url !== url.split("?")[0]) thumbnailCache.clear(); // another map, not another colour
      state.points = { x: points.x, y: points.y, url: url.split("?")[0] };
      state.drawn = props.count;
      state.drawnAt = performance.now();
      state.shownAt ??= state.drawnAt;
      state.error = null;
      status.textContent = "";
      highlight();
    } catch (error) {
      state.error = String(error);
      status.textContent = `The map could not be drawn: ${error.message || error}`;
    }
  };

  // ------------------------------------------------------------------ thumbnails, zoomed in
  const thumbnailCache = new Map(); // image point index -> data URL ("" when the folder keeps none)
  let thumbnailTimer = null;
  let thumbnailRound = 0;

  const placeThumbnails = () => {
    for (const { index, image } of state.thumbnails) {
      const [x, y] = plot.getScreenPosition(index) || [-1e4, -1e4];
      image.style.transform = `translate(${x - THUMBNAIL_PX / 2}px, ${y - THUMBNAIL_PX / 2}px)`;
    }
  };

  /** The image points to draw thumbnails on, in pair order, each taken when its thumbnail overlaps none taken
   * before (a grid of the spacing's cells finds the neighbours); none when the view is not zoomed in enough. */
  const thumbnailPoints = () => {
    const [x0, x1] = plot.get("xScale").domain();
    const [y0, y1] = plot.get("yScale").domain();
    if (Math.min(x1 - x0, y1 - y0) > ZOOMED_IN_SPAN) return [];
    const { x, y } = state.points;
    const images = state.drawn / 2; // points 0..N-1 are the images
    const inView = [];
    for (let i = 0; i < images; i += 1) {
      if (x[i] < x0 || x[i] > x1 || y[i] < y0 || y[i] > y1) continue;
      if (inView.push(i) > ZOOMED_IN_IMAGES) return [];
    }
    const spacing = THUMBNAIL_PX + THUMBNAIL_GAP_PX;
    const toX = canvas.clientWidth / (x1 - x0);
    const toY = canvas.clientHeight / (y1 - y0);
    const taken = new Map(); // grid cell -> the screen position of the thumbnail taken there
    const chosen = [];
    for (const i of inView) {
      const sx = (x[i] - x0) * toX;
      const sy = (y1 - y[i]) * toY;
      const cx = Math.floor(sx / spacing);
      const cy = Math.floor(sy / spacing);
      let free = true;
      for (let dx = -1; dx <= 1 && free; dx += 1) {
        for (let dy = -1; dy <= 1 && free; dy += 1) {
          const other = taken.get(`${cx + dx},${cy + dy}`);
          free = !other || Math.max(Math.abs(other[0] - sx), Math.abs(other[1] - sy)) >= spacing;
        }
      }
      if (!free) continue;
      taken.set(`${cx},${cy}`, [sx, sy]);
      if (chosen.push(i) === MAX_THUMBNAILS) break;
    }
    return chosen;
  };

  const refreshThumbnails = async () => {
    const round = ++thumbnailRound;
    const wanted = state.drawn === props.count && state.points ? thumbnailPoints() : [];
    const missing = wanted.filter((i) => !thumbnailCache.has(i));
    if (missing.length) {
      let urls;
      try {
        urls = await server.dataset_thumbnails(props.token, missing);
      } catch {
        return;
      }
      if (!Array.isArray(urls) || urls.length !== missing.length) return;
      if (thumbnailCache.size + missing.length > MAX_KEPT_THUMBNAILS) thumbnailCache.clear();
      missing.forEach((index, k) => thumbnailCache.set(index, urls[k]));
    }
    if (round !== thumbnailRound) return; // the view moved on while the server answered
    thumbnailLayer.replaceChildren();
    state.thumbnails = wanted
      .filter((index) => thumbnailCache.get(index))
      .map((index) => {
        const image = document.createElement("img");
        image.src = thumbnailCache.get(index);
        image.alt = "";
        image.style.cssText = `position:absolute;left:0;top:0;width:${THUMBNAIL_PX}px;height:${THUMBNAIL_PX}px;
          object-fit:cover;border:1px solid #fff;border-radius:3px;box-shadow:0 0 2px rgba(0,0,0,.6)`;
        thumbnailLayer.appendChild(image);
        return { index, image };
      });
    placeThumbnails();
  };

  plot.subscribe("view", () => {
    placeThumbnails(); // follow the pan and zoom every frame, then ask again once the view rests
    clearTimeout(thumbnailTimer);
    thumbnailTimer = setTimeout(refreshThumbnails, THUMBNAIL_DELAY_MS);
  });

  const highlight = () => {
    const wanted = Array.isArray(props.highlight) ? props.highlight.filter((i) => i >= 0 && i < state.drawn) : [];
    if (wanted.length) plot.select(wanted, { preventEvent: true });
    else plot.deselect({ preventEvent: true });
  };

  plot.subscribe("pointOver", async (index) => {
    if (state.drawn !== props.count) return; // a preview's points are not the pairs' numbers
    state.hovered = index;
    showInPartner(index);
    const token = props.token;
    let info;
    try {
      info = await server.dataset_point(token, index);
    } catch {
      return;
    }
    if (state.hovered !== index || !info) return;
    const image = info.thumbnail ? `<img src="${info.thumbnail}" alt="">` : "";
    const fields = info.fields ? `<br><small>${escapeHtml(info.fields)}</small>` : "";
    tip.innerHTML = `${image}<div><b>${escapeHtml(info.title)}</b><br>${escapeHtml(info.caption)}${fields}</div>`;
    const [x, y] = plot.getScreenPosition(index) || [0, 0];
    tip.style.left = `${Math.min(x + 12, canvas.clientWidth - 260)}px`;
    tip.style.top = `${Math.max(y - 12, 0)}px`;
    tip.style.display = "flex";
  });
  plot.subscribe("pointOut", () => {
    state.hovered = null;
    showInPartner(null);
    tip.style.display = "none";
  });
  const report = (points) =>
    state.drawn === props.count &&
    trigger("select", { index: points.length, value: JSON.stringify(Array.from(points.slice(0, MAX_SENT_POINTS))) });
  plot.subscribe("select", ({ points }) => report(points));
  plot.subscribe("deselect", () => report([]));

  watch(["points", "count", "colour_kind"], async () => {
    await draw();
    refreshThumbnails();
  });
  watch("highlight", highlight);
  state.ready = draw();
  return state;
}
