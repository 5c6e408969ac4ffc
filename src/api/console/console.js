// The console's live parts. Everything the server sends is put on the page as text
// (textContent), never as markup.
"use strict";

// How often parts of a page that still change are fetched again.
const REFRESH_MS = 2000;
// The most log lines put on the page in one frame: a long log renders in pieces and the page
// stays responsive while it streams.
const LINES_PER_FRAME = 2000;

// Fetches the page again and swaps each part marked data-live for its new version, until the
// server renders none so marked.
function refreshLiveParts() {
  if (!document.querySelector("[data-live]")) return;
  setTimeout(async () => {
    try {
      const response = await fetch(location.href, { credentials: "same-origin" });
      if (response.ok) {
        const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
        for (const part of document.querySelectorAll("[data-live][id]")) {
          const replacement = fresh.getElementById(part.id);
          if (replacement) part.replaceWith(document.importNode(replacement, true));
        }
      }
    } finally {
      refreshLiveParts();
    }
  }, REFRESH_MS);
}

const ANSI_SEQUENCE = /\x1b\[([0-9;?]*)([A-Za-z])/g;
const COLOURS = ["black", "red", "green", "yellow", "blue", "magenta", "cyan", "white"];

// The spans of one log line: text with its SGR colours and weights as classes and styles;
// other escape sequences (cursor moves) are dropped.
function renderLine(text, state) {
  const line = document.createElement("div");
  let at = 0;
  const emit = (part) => {
    if (!part) return;
    if (!state.classes.length && !state.colour) {
      line.append(part);
      return;
    }
    const span = document.createElement("span");
    span.className = state.classes.join(" ");
    if (state.colour) span.style.color = state.colour;
    span.textContent = part;
    line.append(span);
  };
  for (const match of text.matchAll(ANSI_SEQUENCE)) {
    emit(text.slice(at, match.index));
    at = match.index + match[0].length;
    if (match[2] === "m") applySgr(match[1], state);
  }
  emit(text.slice(at));
  return line;
}

function applySgr(parameters, state) {
  const codes = parameters === "" ? [0] : parameters.split(";").map(Number);
  const without = (prefix) => state.classes.filter((c) => !c.startsWith(prefix));
  for (let i = 0; i < codes.length; i++) {
    const code = codes[i];
    if (code === 0) { state.classes = []; state.colour = null; }
    else if (code === 1) state.classes = [...without("bold"), "bold"];
    else if (code === 3) state.classes = [...without("italic"), "italic"];
    else if (code === 4) state.classes = [...without("underline"), "underline"];
    else if (code === 22) state.classes = without("bold");
    else if (code === 23) state.classes = without("italic");
    else if (code === 24) state.classes = without("underline");
    else if ((code >= 30 && code <= 37) || (code >= 90 && code <= 97)) {
      const name = COLOURS[code % 10] + (code >= 90 ? "-bright" : "");
      state.classes = [...without("fg-"), "fg-" + name];
      state.colour = null;
    } else if (code === 39) { state.classes = without("fg-"); state.colour = null; }
    else if ((code >= 40 && code <= 47) || (code >= 100 && code <= 107)) {
      const name = COLOURS[code % 10] + (code >= 100 ? "-bright" : "");
      state.classes = [...without("bg-"), "bg-" + name];
    } else if (code === 49) state.classes = without("bg-");
    else if (code === 38 && codes[i + 1] === 5) {
      state.colour = xterm256(codes[i + 2]); i += 2;
    } else if (code === 38 && codes[i + 1] === 2) {
      state.colour = `rgb(${codes[i + 2]}, ${codes[i + 3]}, ${codes[i + 4]})`; i += 4;
    }
  }
}

function xterm256(n) {
  if (n < 16) return null;
  if (n >= 232) { const v = 8 + (n - 232) * 10; return `rgb(${v}, ${v}, ${v})`; }
  const c = n - 16, level = (x) => (x === 0 ? 0 : 55 + x * 40);
  return `rgb(${level(Math.floor(c / 36))}, ${level(Math.floor(c / 6) % 6)}, ${level(c % 6)})`;
}

// The log pane of step `step`, made if the page has none yet (the build had no plan yet when
// the page was rendered).
function logPane(section, step, label, name) {
  const existing = document.getElementById("log-" + step);
  if (existing) return existing;
  const details = document.createElement("details");
  details.className = "log";
  details.open = true;
  details.dataset.step = step;
  const summary = document.createElement("summary");
  const code = document.createElement("code");
  code.textContent = name;
  summary.append(label + " ", code);
  const pre = document.createElement("pre");
  pre.id = "log-" + step;
  details.append(summary, pre);
  const later = [...section.querySelectorAll("details.log")]
    .find((pane) => Number(pane.dataset.step) > step);
  section.insertBefore(details, later ?? null);
  return pre;
}

// Follows a build's log over the API's server-sent events and renders it step by step.
function followLog(section) {
  const pending = []; // lines received, not yet on the page
  const colourState = new Map(); // per step: SGR state carried across lines
  let lastSeq = 0, ended = false, scheduled = false, source = null;

  const flush = () => {
    scheduled = false;
    const touched = new Set();
    const batch = pending.splice(0, LINES_PER_FRAME);
    const fragments = new Map();
    for (const line of batch) {
      if (!colourState.has(line.step)) colourState.set(line.step, { classes: [], colour: null });
      const element = renderLine(line.text, colourState.get(line.step));
      if (line.stream === "stderr") element.className = "stderr";
      if (!fragments.has(line.step)) fragments.set(line.step, document.createDocumentFragment());
      fragments.get(line.step).append(element);
    }
    for (const [step, fragment] of fragments) {
      const pre = logPane(section, step, "#" + step, "");
      const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      pre.append(fragment);
      pre.dataset.lines = pre.childElementCount;
      if (atEnd) touched.add(pre);
    }
    for (const pre of touched) pre.scrollTop = pre.scrollHeight;
    if (pending.length) schedule();
  };
  const schedule = () => {
    if (!scheduled) { scheduled = true; requestAnimationFrame(flush); }
  };

  const open = () => {
    const url = new URL(section.dataset.log, location.href);
    url.searchParams.set("after", lastSeq);
    source = new EventSource(url);
    source.addEventListener("line", (event) => {
      lastSeq = Number(event.lastEventId) || lastSeq;
      pending.push(JSON.parse(event.data));
      schedule();
    });
    source.addEventListener("step", (event) => {
      const step = JSON.parse(event.data);
      logPane(section, step.step, step.id ?? "#" + step.step, step.name);
    });
    source.addEventListener("end", () => {
      ended = true;
      source.close();
      section.dataset.ended = "true";
    });
    source.addEventListener("error", () => {
      source.close();
      // The server closed the stream or went away: resume after the last line received.
      if (!ended) setTimeout(open, 1000);
    });
  };
  open();
}

document.addEventListener("DOMContentLoaded", () => {
  refreshLiveParts();
  for (const section of document.querySelectorAll("[data-log]")) followLog(section);
});
