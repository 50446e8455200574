// The upload page: drag-and-drop or pick an image, POST it to the API, show the answer.
// Loaded from /static because the Content-Security-Policy forbids inline script.
(function () {
  "use strict";
  var SVG = "http://www.w3.org/2000/svg";
  var form = document.getElementById("predict-form");
  var task = document.getElementById("task");
  var model = document.getElementById("model");
  var drop = document.getElementById("drop");
  var file = document.getElementById("file");
  var status = document.getElementById("status");
  var result = document.getElementById("result");
  var token = document.getElementById("token");
  var maxBytes = parseInt(form.getAttribute("data-max-bytes"), 10);
  var originalUrl = null;

  function showModelsOf(chosenTask) {
    var first = null;
    Array.prototype.forEach.call(model.options, function (opt) {
      var visible = opt.getAttribute("data-task") === chosenTask;
      opt.hidden = !visible;
      opt.disabled = !visible;
      if (visible && first === null) { first = opt; }
    });
    if (first && (model.selectedOptions.length === 0 || model.selectedOptions[0].disabled)) {
      model.value = first.value;
    }
  }

  function say(text, isError) {
    status.textContent = text;
    status.classList.toggle("error", Boolean(isError));
  }

  function drawBars(probabilities, winner) {
    var svg = document.getElementById("bars");
    while (svg.firstChild) { svg.removeChild(svg.firstChild); }
    var names = Object.keys(probabilities);
    // Drawn to the width the panel has, so the text stays 13 px; on a narrow screen (a phone's
    // panel is about 330 px) each class name goes above its bar instead of beside it.
    var width = Math.max(260, Math.min(590, svg.parentNode.clientWidth || 590));
    var stacked = width < 480;
    var rowHeight = stacked ? 44 : 28, labelWidth = stacked ? 0 : 160, top = stacked ? 22 : 6;
    var barWidth = width - labelWidth - 70;
    svg.setAttribute("viewBox", "0 0 " + width + " " + names.length * rowHeight);
    svg.setAttribute("width", String(width));
    svg.setAttribute("height", String(names.length * rowHeight));
    names.forEach(function (name, i) {
      var p = probabilities[name], y = i * rowHeight;
      var label = document.createElementNS(SVG, "text");
      label.setAttribute("x", String(stacked ? 0 : labelWidth - 8));
      label.setAttribute("y", String(y + (stacked ? 16 : 18)));
      label.setAttribute("text-anchor", stacked ? "start" : "end");
      label.textContent = name;
      var track = document.createElementNS(SVG, "rect");
      track.setAttribute("x", String(labelWidth)); track.setAttribute("y", String(y + top));
      track.setAttribute("width", String(barWidth)); track.setAttribute("height", "16");
      track.setAttribute("class", "track");
      var bar = document.createElementNS(SVG, "rect");
      bar.setAttribute("x", String(labelWidth)); bar.setAttribute("y", String(y + top));
      bar.setAttribute("width", String(Math.max(1, p * barWidth))); bar.setAttribute("height", "16");
      bar.setAttribute("class", name === winner ? "bar winner" : "bar");
      var value = document.createElementNS(SVG, "text");
      value.setAttribute("x", String(labelWidth + barWidth + 8));
      value.setAttribute("y", String(y + top + 12));
      value.textContent = (p * 100).toFixed(1) + "%";
      [label, track, bar, value].forEach(function (el) { svg.appendChild(el); });
    });
  }

  // What the answer says of a DICOM header (never a patient field): modality, photometric, frame, window.
  function describeDicom(dicom) {
    var parts = ["DICOM", dicom.modality || "", dicom.photometric_interpretation,
      "frame " + (dicom.frame.index + 1) + " of " + dicom.frame.count];
    var w = dicom.window;
    if (w) {
      parts.push(w.source === "voi_lut" ? "VOI LUT" : (w.source === "percentile" ? "auto window" : "window") +
        " C " + Number(w.center.toPrecision(4)) + " W " + Number(w.width.toPrecision(4)));
    }
    return parts.filter(Boolean).join(" ");
  }

  function percent(x) { return (x * 100).toFixed(1) + "%"; }

  // What the model card says beside every answer: task, training set, validation figures, classes,
  // and the demo notice for a model trained on synthetic images.
  function describeModel(summary) {
    var banner = document.getElementById("demo-banner");
    banner.textContent = summary && summary.notice ? summary.notice : "";
    banner.hidden = !(summary && summary.notice);
    var unknown = "not recorded in the model card";
    document.getElementById("about-task").textContent = (summary && summary.task) || unknown;
    document.getElementById("about-dataset").textContent = (summary && summary.dataset) || unknown;
    var v = summary && summary.validation;
    var parts = [];
    if (v) {
      if (v.accuracy !== null) { parts.push("accuracy " + percent(v.accuracy)); }
      if (v.balanced_accuracy !== null) { parts.push("balanced accuracy " + percent(v.balanced_accuracy)); }
      if (v.images !== null) { parts.push("on " + v.images + " images"); }
      if (v.chance !== null) { parts.push("chance " + percent(v.chance)); }
    }
    document.getElementById("about-validation").textContent = parts.length ? parts.join(", ") : unknown;
    document.getElementById("about-classes").textContent =
      summary && summary.class_names.length ? summary.class_names.join(", ") : unknown;
  }

  function show(answer) {
    describeModel(answer.model_summary);
    document.getElementById("label").textContent = answer.label;
    document.getElementById("confidence").textContent =
      "(" + (answer.probabilities[answer.label] * 100).toFixed(1) + "%)";
    document.getElementById("meta").textContent =
      answer.model + " v" + answer.version + " \u00b7 " + answer.timings_ms.total.toFixed(0) + " ms" +
      (answer.dicom ? " \u00b7 " + describeDicom(answer.dicom) : "");
    // A browser cannot show a DICOM file; the overlays are drawn on the windowed image the model saw.
    document.getElementById("original-figure").hidden = Boolean(answer.dicom);
    var windowedFigure = document.getElementById("windowed-figure");
    if (answer.display_png) {
      document.getElementById("windowed").src = "data:image/png;base64," + answer.display_png;
      windowedFigure.hidden = false;
    } else {
      windowedFigure.hidden = true;
    }
    var overlayFigure = document.getElementById("overlay-figure");
    if (answer.overlay_png) {
      document.getElementById("overlay").src = "data:image/png;base64," + answer.overlay_png;
      overlayFigure.hidden = false;
    } else {
      overlayFigure.hidden = true;
    }
    // A model whose map was unusable still answers its prediction; say which picture is missing and why.
    var omitted = answer.overlay_omitted || {};
    var reasons = Object.keys(omitted).map(function (name) {
      return (name === "overlay" ? "Grad-CAM overlay" : "Attention overlay") + " not shown: " + omitted[name] + ".";
    });
    var omittedNote = document.getElementById("omitted");
    omittedNote.textContent = reasons.join(" ");
    omittedNote.hidden = reasons.length === 0;
    var attentionFigure = document.getElementById("attention-figure");
    if (answer.attention_png) {
      document.getElementById("attention").src = "data:image/png;base64," + answer.attention_png;
      attentionFigure.hidden = false;
    } else {
      attentionFigure.hidden = true;
    }
    result.hidden = false;  // shown first: the bars are drawn to the width the panel then has
    drawBars(answer.probabilities, answer.label);
  }

  function upload(chosen) {
    if (!chosen) { return; }
    if (!model.value) { say("No model is served yet.", true); return; }
    if (chosen.size > maxBytes) {
      say("That file is " + (chosen.size / 1e6).toFixed(1) + " MB; the limit is " + (maxBytes / 1e6).toFixed(1) + " MB.", true);
      return;
    }
    if (originalUrl) { URL.revokeObjectURL(originalUrl); originalUrl = null; }
    var original = document.getElementById("original");
    if (/\.dcm$/i.test(chosen.name) || chosen.type === "application/dicom") {
      original.removeAttribute("src");  // not a picture a browser can show
    } else {
      originalUrl = URL.createObjectURL(chosen);
      original.src = originalUrl;
    }
    var body = new FormData();
    body.append("image", chosen);
    var headers = { "Accept": "application/json" };
    if (token && token.value) { headers.Authorization = "Bearer " + token.value; }
    say("Analysing " + chosen.name + "\u2026", false);
    fetch("/api/v1/models/" + encodeURIComponent(model.value) + "/predict?explain=gradcam", {
      method: "POST", body: body, headers: headers
    }).then(function (response) {
      return response.json().then(function (answer) { return { ok: response.ok, answer: answer }; });
    }).then(function (r) {
      if (!r.ok) {
        result.hidden = true;
        say(r.answer.error ? r.answer.error.message : "The server could not answer.", true);
        return;
      }
      say("", false);
      show(r.answer);
    }).catch(function (err) {
      say("The request failed: " + err.message, true);
    });
  }

  if (task) {
    task.addEventListener("change", function () { showModelsOf(task.value); });
    showModelsOf(task.value);
  }
  drop.addEventListener("click", function () { file.click(); });
  drop.addEventListener("keydown", function (e) {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); file.click(); }
  });
  file.addEventListener("change", function () { upload(file.files[0]); });
  ["dragenter", "dragover"].forEach(function (name) {
    drop.addEventListener(name, function (e) { e.preventDefault(); drop.classList.add("over"); });
  });
  ["dragleave", "drop"].forEach(function (name) {
    drop.addEventListener(name, function (e) { e.preventDefault(); drop.classList.remove("over"); });
  });
  drop.addEventListener("drop", function (e) {
    if (e.dataTransfer && e.dataTransfer.files.length) { upload(e.dataTransfer.files[0]); }
  });
}());
