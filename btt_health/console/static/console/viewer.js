// The study page's image viewer: slices of the selected series rendered by the server
// (/viewer/images/..., the DICOMweb rendering with window=center,width), scrolled with the wheel,
// arrow keys, Page Up/Down, Home/End or the slider; window/level from presets or by dragging
// (a live SVG-filter preview while dragging, the exact rendering when the mouse is released);
// zoom (+/-/0, ctrl+wheel, buttons) and shift-drag pan; AI findings marked on the slice bar at
// every image they rest on (best image, longest run, other positive images) and outlined on them.
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("viewer-data").textContent);
  var viewport = document.getElementById("viewport");
  var stage = document.getElementById("stage");
  var img = document.getElementById("slice-image");
  var slider = document.getElementById("slice-slider");
  var readout = document.getElementById("slice-readout");
  var wlReadout = document.getElementById("wl-readout");
  var overlay = document.getElementById("finding-overlay");
  var marks = document.getElementById("finding-marks");
  var funcs = document.querySelectorAll("#wl-preview feFuncR, #wl-preview feFuncG, #wl-preview feFuncB");
  var seriesButtons = document.querySelectorAll(".series-button");
  var PRESETS = ["40,400", "-600,1500", "400,1800", "40,80", ""];

  var state = { series: null, index: 0, window: null, zoom: 1, panX: 0, panY: 0 };
  var cache = {};

  function imageUrl(sop, win) {
    var url = data.imageUrl.replace("_STUDY_", data.study).replace("_SERIES_", state.series.series_instance_uid)
      .replace("_SOP_", sop).replace("999999", "1");
    return win ? url + "?window=" + encodeURIComponent(win.c + "," + win.w) : url;
  }
  function windowKey() { return state.window ? state.window.c + "," + state.window.w : ""; }
  function preload(i) {
    var images = state.series.images;
    if (i < 0 || i >= images.length) return;
    var url = imageUrl(images[i].sop_instance_uid, state.window);
    if (!cache[url]) { cache[url] = new Image(); cache[url].src = url; }
  }
  function show() {
    var images = state.series.images;
    if (!images.length) return;
    var ref = images[state.index];
    var url = imageUrl(ref.sop_instance_uid, state.window);
    img.onload = function () { viewport.dataset.loaded = ref.sop_instance_uid + "|" + windowKey(); resetPreview(); };
    img.src = url;
    img.alt = "Image " + (state.index + 1) + " of " + images.length;
    viewport.dataset.slice = String(state.index + 1);
    viewport.dataset.window = windowKey();
    slider.value = String(state.index + 1);
    slider.setAttribute("aria-valuetext", "image " + (state.index + 1) + " of " + images.length);
    readout.textContent = "Image " + (state.index + 1) + " / " + images.length + (ref.number != null ? " · #" + ref.number : "");
    wlReadout.textContent = state.window ? "W " + Math.round(state.window.w) + " L " + Math.round(state.window.c) : "W/L from image";
    var sop = ref.sop_instance_uid;
    var finding = data.findings.filter(function (f) { return f.best_image === sop; })[0];
    var supporting = finding ? null : data.findings.filter(function (f) {
      return (f.positive_images || []).indexOf(sop) >= 0;
    })[0];
    if (finding) {
      overlay.hidden = false;
      overlay.className = "finding-overlay" + (finding.positive ? " positive" : "");
      overlay.dataset.kind = "best";
      overlay.textContent = finding.label + (finding.positive ? " suspected" : " not found") +
        " · " + Math.round(finding.probability) + " % (highest on this image)";
    } else if (supporting) {
      // Every image at or above the threshold is outlined; those of the longest run are the finding.
      var inRun = (supporting.run_images || []).indexOf(sop) >= 0;
      overlay.hidden = false;
      overlay.className = "finding-overlay" + (supporting.positive && inRun ? " positive" : "") + (inRun ? " run" : " other");
      overlay.dataset.kind = inRun ? "run" : "positive";
      overlay.textContent = supporting.label + " · above the threshold on this image" +
        (inRun ? " (" + supporting.run_images.length + " adjacent images)" : " (outside the longest run)");
    } else {
      overlay.hidden = true;
      overlay.dataset.kind = "";
    }
    for (var d = 1; d <= 3; d++) { preload(state.index + d); preload(state.index - d); }
  }
  function go(index) {
    var n = state.series.images.length;
    state.index = Math.max(0, Math.min(n - 1, index));
    show();
  }
  function selectSeries(uid, index) {
    state.series = data.series.filter(function (s) { return s.series_instance_uid === uid; })[0] || data.series[0];
    if (!state.series) return;
    seriesButtons.forEach(function (b) { b.setAttribute("aria-pressed", String(b.dataset.series === state.series.series_instance_uid)); });
    slider.max = String(Math.max(1, state.series.images.length));
    drawMarks();
    go(index != null ? index : Math.floor(state.series.images.length / 2));
  }
  function drawMarks() {
    marks.innerHTML = "";
    var images = state.series.images;
    // A mark per image the finding rests on: its best image, every image at or above the
    // threshold, and (taller) those of the longest run of adjacent ones.
    data.findings.forEach(function (f) {
      var positive = f.positive_images || [];
      var run = f.run_images || [];
      images.forEach(function (ref, i) {
        var sop = ref.sop_instance_uid;
        var best = sop === f.best_image;
        var inRun = run.indexOf(sop) >= 0;
        if (!best && !inRun && positive.indexOf(sop) < 0) return;
        var mark = document.createElement("span");
        mark.className = "mark" + (f.positive && (best || inRun) ? " positive" : "") +
          (inRun ? " run" : "") + (best ? " best" : "");
        mark.style.left = (images.length > 1 ? (i / (images.length - 1)) * 100 : 50) + "%";
        mark.title = f.label + (best ? " (highest)" : inRun ? " (longest run)" : " (above threshold)") +
          " · image " + (i + 1);
        mark.dataset.sop = sop;
        marks.appendChild(mark);
      });
    });
  }
  function setWindow(text) {
    if (!text) { state.window = null; } else {
      var p = text.split(",");
      state.window = { c: parseFloat(p[0]), w: Math.max(1, parseFloat(p[1])) };
    }
    show();
  }
  function applyZoom() {
    stage.style.transform = "translate(" + state.panX + "px," + state.panY + "px) scale(" + state.zoom + ")";
    viewport.dataset.zoom = state.zoom.toFixed(2);
  }
  function zoom(factor) { state.zoom = Math.max(0.5, Math.min(8, state.zoom * factor)); applyZoom(); }
  function resetView() { state.zoom = 1; state.panX = 0; state.panY = 0; applyZoom(); }

  // Live preview while dragging the window: the displayed 8-bit value v under window (c, w)
  // becomes v*(w/w') + (c - w/2 - c' + w'/2)/w' under (c', w'), a linear map an SVG filter does exactly.
  function preview(from, to) {
    var slope = from.w / to.w;
    var intercept = (from.c - from.w / 2 - to.c + to.w / 2) / to.w;
    funcs.forEach(function (f) { f.setAttribute("slope", slope); f.setAttribute("intercept", intercept); });
    img.style.filter = "url(#wl-preview)";
    wlReadout.textContent = "W " + Math.round(to.w) + " L " + Math.round(to.c);
  }
  function resetPreview() { img.style.filter = ""; }

  // Slices: wheel (ctrl+wheel zooms), keys, slider.
  viewport.addEventListener("wheel", function (event) {
    event.preventDefault();
    if (event.ctrlKey) { zoom(event.deltaY < 0 ? 1.1 : 1 / 1.1); return; }
    go(state.index + (event.deltaY > 0 ? 1 : -1));
  }, { passive: false });
  slider.addEventListener("input", function () { go(parseInt(slider.value, 10) - 1); });
  document.addEventListener("keydown", function (event) {
    var tag = (event.target.tagName || "").toLowerCase();
    if (tag === "textarea" || tag === "input" || tag === "select" || event.altKey || event.metaKey || event.ctrlKey) return;
    if (!state.series) return;
    var handled = true;
    switch (event.key) {
      case "ArrowDown": case "ArrowRight": go(state.index + 1); break;
      case "ArrowUp": case "ArrowLeft": go(state.index - 1); break;
      case "PageDown": go(state.index + 10); break;
      case "PageUp": go(state.index - 10); break;
      case "Home": go(0); break;
      case "End": go(state.series.images.length - 1); break;
      case "+": case "=": zoom(1.25); break;
      case "-": zoom(0.8); break;
      case "0": resetView(); break;
      case "1": case "2": case "3": case "4": case "5": setWindow(PRESETS[parseInt(event.key, 10) - 1]); break;
      default: handled = false;
    }
    // Arrow keys on a focused button or link keep their usual meaning only when not on the viewer.
    if (handled) event.preventDefault();
  });

  // Drag: window/level (horizontal = width, vertical = level); shift-drag pans.
  var drag = null;
  viewport.addEventListener("pointerdown", function (event) {
    if (event.button !== 0) return;
    viewport.focus();
    viewport.setPointerCapture(event.pointerId);
    var base = state.window || { c: 40, w: 400 };
    drag = { x: event.clientX, y: event.clientY, pan: event.shiftKey, from: base, to: base, panX: state.panX, panY: state.panY, moved: false };
  });
  viewport.addEventListener("pointermove", function (event) {
    if (!drag) return;
    var dx = event.clientX - drag.x, dy = event.clientY - drag.y;
    if (Math.abs(dx) + Math.abs(dy) > 2) drag.moved = true;
    if (drag.pan) { state.panX = drag.panX + dx; state.panY = drag.panY + dy; applyZoom(); return; }
    var scale = Math.max(1, drag.from.w / 200);
    drag.to = { c: drag.from.c + dy * scale, w: Math.max(1, drag.from.w + dx * scale * 2) };
    if (state.window) preview(drag.from, drag.to); else wlReadout.textContent = "W " + Math.round(drag.to.w) + " L " + Math.round(drag.to.c);
  });
  function endDrag() {
    if (!drag) return;
    var done = drag;
    drag = null;
    if (!done.pan && done.moved) { state.window = { c: Math.round(done.to.c), w: Math.round(done.to.w) }; show(); }
  }
  viewport.addEventListener("pointerup", endDrag);
  viewport.addEventListener("pointercancel", endDrag);

  document.querySelectorAll("[data-preset]").forEach(function (b) {
    b.addEventListener("click", function () { setWindow(b.dataset.preset); viewport.focus(); });
  });
  document.querySelectorAll("[data-zoom]").forEach(function (b) {
    b.addEventListener("click", function () {
      if (b.dataset.zoom === "in") zoom(1.25); else if (b.dataset.zoom === "out") zoom(0.8); else resetView();
    });
  });
  seriesButtons.forEach(function (b) {
    b.addEventListener("click", function () { selectSeries(b.dataset.series); viewport.focus(); });
  });
  document.querySelectorAll("[data-goto-image]").forEach(function (b) {
    b.addEventListener("click", function () {
      selectSeries(b.dataset.gotoSeries);
      var i = state.series.images.map(function (r) { return r.sop_instance_uid; }).indexOf(b.dataset.gotoImage);
      if (i >= 0) go(i);
      viewport.focus();
    });
  });

  // Start on the series and image of the first positive finding, else the largest series' middle.
  var first = data.findings.filter(function (f) { return f.positive; })[0] || data.findings[0];
  var modality = (data.series[0] || {}).modality;
  state.window = modality === "CT" ? { c: 40, w: 400 } : null;
  if (first && data.series.some(function (s) { return s.series_instance_uid === first.series_instance_uid; })) {
    selectSeries(first.series_instance_uid);
    var at = state.series.images.map(function (r) { return r.sop_instance_uid; }).indexOf(first.best_image);
    if (at >= 0) go(at);
  } else if (data.series.length) {
    var largest = data.series.slice().sort(function (a, b) { return b.images.length - a.images.length; })[0];
    selectSeries(largest.series_instance_uid);
  }
  applyZoom();
})();
