"""SVG and PNG (3x) downloads on every plot of the page, drawn by plotly.js in the browser (no server-side
browser, no kaleido).

Gradio's gr.Plot draws each figure with `Plotly.react(div, data, layout, config)`, its config only
`{responsive: true}` (a figure's JSON has no config to carry one through). So one script in
the page's <head> (`launch(head=FIGURE_EXPORT_HEAD)`, see `vlviz.ui.launch_kwargs`) catches plotly.js
when Gradio's plot bundle sets `window.Plotly`, and from then on adds two mode-bar buttons to every
plot it draws, in place of plotly's own PNG button: "Download as SVG" and "Download as PNG (3x)".
Both call `Plotly.downloadImage` at the plot's size on screen (width and height null), so the PNG is
three times the plot's CSS size. Files are named after the figure's title in plain ASCII words.
"""

from __future__ import annotations

import json

PNG_SCALE = 3
SVG_BUTTON_TITLE = "Download as SVG"
PNG_BUTTON_TITLE = f"Download as PNG ({PNG_SCALE}x)"

FIGURE_EXPORT_JS = (
    """
(() => {
  const PNG_SCALE = __PNG_SCALE__;
  const fileName = (gd) => {
    const title = (gd.layout && gd.layout.title && (gd.layout.title.text || gd.layout.title)) || "";
    const words = String(title).replace(/<[^>]*>/g, " ").toLowerCase().replace(/[^a-z0-9]+/g, "-");
    return "vlviz-" + (words.replace(/^-+|-+$/g, "").slice(0, 60).replace(/-+$/, "") || "figure");
  };
  const download = (gd, format, scale) =>
    window.Plotly.downloadImage(gd, {format, scale, width: null, height: null, filename: fileName(gd)});
  let buttons = null;  // made once, so that each redraw sees the same config and keeps the plot
  const withExports = (config) => {
    const icons = window.Plotly.Icons;
    buttons = buttons || [
      {name: "vlviz-svg", title: __SVG_TITLE__, icon: icons.disk, click: (gd) => download(gd, "svg", 1)},
      {name: "vlviz-png", title: __PNG_TITLE__, icon: icons.camera, click: (gd) => download(gd, "png", PNG_SCALE)},
    ];
    const given = config || {};
    return Object.assign({}, given, {
      modeBarButtonsToAdd: [...(given.modeBarButtonsToAdd || []), ...buttons],
      modeBarButtonsToRemove: [...(given.modeBarButtonsToRemove || []), "toImage"],
    });
  };
  const patch = (plotly) => {
    if (!plotly || plotly.__vlvizExports) return;
    for (const method of ["newPlot", "react"]) {
      const draw = plotly[method];
      plotly[method] = function (gd, data, layout, config) {
        if (data && !Array.isArray(data)) {  // the one-object form: (gd, {data, layout, config, frames})
          return draw.call(this, gd, Object.assign({}, data, {config: withExports(data.config)}));
        }
        return draw.call(this, gd, data, layout, withExports(config));
      };
    }
    plotly.__vlvizExports = true;
  };
  let plotly = window.Plotly;
  patch(plotly);
  Object.defineProperty(window, "Plotly", {
    configurable: true,
    get: () => plotly,
    set: (value) => { patch(value); plotly = value; },
  });
})();
""".replace("__PNG_SCALE__", str(PNG_SCALE))
    .replace("__SVG_TITLE__", json.dumps(SVG_BUTTON_TITLE))
    .replace("__PNG_TITLE__", json.dumps(PNG_BUTTON_TITLE))
)

FIGURE_EXPORT_HEAD = f"<script>{FIGURE_EXPORT_JS}</script>"
"""The <head> snippet for `gr.Blocks.launch(head=...)`."""
