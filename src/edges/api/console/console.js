// The console's live parts. Everything the server sends is put on the page as text
// (textContent), never as markup.
"use strict";

// How often parts of a page that still change are fetched again.
const REFRESH_MS = 2000;
// How long one frame may spend turning log lines into elements: a long log renders in pieces
// and the page stays responsive while it streams.
const FRAME_BUDGET_MS = 8;

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
    } catch {
      // The server is away for a moment: try again at the next turn.
    } finally {
      refreshLiveParts();
    }
  }, REFRESH_MS);
}

const ANSI_SEQUENCE = /\x1b\[([0-9;?]*)([A-Za-z])/g;
const COLOURS = ["black", "red", "green", "yellow", "blue", "magenta", "cyan", "white"];

// The lines of one step that one frame puts on the page, as one element: runs of plain text as
// single text nodes, only styled parts as spans. Few nodes keep a long log cheap to lay out.
class Chunk {
  constructor() {
    this.element = document.createElement("div");
    this.text = "";
    this.lines = 0;
  }

  plain(text) {
    this.text += text;
  }

  styled(text, className, colour) {
    this.settle();
    const span = document.createElement("span");
    span.className = className;
    if (colour) span.style.color = colour;
    span.textContent = text;
    this.element.append(span);
  }

  settle() {
    if (this.text) this.element.append(this.text);
    this.text = "";
  }
}

// Adds a log line to `chunk` with its SGR colours and weights (carried in `state` from line to
// line); other escape sequences (cursor moves) are dropped.
function renderLine(chunk, text, stderr, state) {
  const emit = (part) => {
    if (!part) return;
    const classes = stderr ? [...state.classes, "stderr"] : state.classes;
    if (!classes.length && !state.colour) chunk.plain(part);
    else chunk.styled(part, classes.join(" "), state.colour);
  };
  let at = 0;
  for (const match of text.matchAll(ANSI_SEQUENCE)) {
    emit(text.slice(at, match.index));
    at = match.index + match[0].length;
    if (match[2] === "m") applySgr(match[1], state);
  }
  emit(text.slice(at));
  chunk.plain("\n");
  chunk.lines++;
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
    else if ((code === 38 || code === 48) && codes[i + 1] === 5) {
      // 256 colours: the first 16 as the classes above, the rest as a style.
      const n = codes[i + 2], prefix = code === 38 ? "fg-" : "bg-";
      if (n < 16) state.classes = [...without(prefix), prefix + COLOURS[n % 8] + (n >= 8 ? "-bright" : "")];
      else if (code === 38) state.colour = xterm256(n);
      i += 2;
    } else if ((code === 38 || code === 48) && codes[i + 1] === 2) {
      if (code === 38) state.colour = `rgb(${codes[i + 2]}, ${codes[i + 3]}, ${codes[i + 4]})`;
      i += 4;
    }
  }
}

function xterm256(n) {
  if (n >= 232) { const v = 8 + (n - 232) * 10; return `rgb(${v}, ${v}, ${v})`; }
  const c = n - 16, level = (x) => (x === 0 ? 0 : 55 + x * 40);
  return `rgb(${level(Math.floor(c / 36))}, ${level(Math.floor(c / 6) % 6)}, ${level(c % 6)})`;
}

// The log pane of step `step`, made if the page has none yet (the build had no plan yet when
// the page was rendered).
// A pane made for a line that came before its step's event is labelled when the event comes.
function logPane(section, step, label, name) {
  const existing = document.getElementById("log-" + step);
  const pane = existing?.parentElement;
  if (existing && !(name && pane.dataset.unlabelled)) return existing;
  const summary = document.createElement("summary");
  const code = document.createElement("code");
  code.textContent = name;
  summary.append(label + " ", code);
  if (existing) {
    pane.querySelector("summary").replaceWith(summary);
    delete pane.dataset.unlabelled;
    return existing;
  }
  const details = document.createElement("details");
  details.className = "log";
  details.open = true;
  details.dataset.step = step;
  if (!name) details.dataset.unlabelled = "true";
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
    const chunks = new Map();
    const started = performance.now();
    let taken = 0;
    while (taken < pending.length && (taken % 256 || performance.now() - started < FRAME_BUDGET_MS)) {
      const line = pending[taken++];
      if (!colourState.has(line.step)) colourState.set(line.step, { classes: [], colour: null });
      if (!chunks.has(line.step)) chunks.set(line.step, new Chunk());
      const stderr = line.stream === "stderr";
      renderLine(chunks.get(line.step), line.text, stderr, colourState.get(line.step));
    }
    pending.splice(0, taken);
    const atEnd = new Set();
    for (const [step, chunk] of chunks) {
      const pre = logPane(section, step, "#" + step, "");
      if (pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4) atEnd.add(pre);
      chunk.settle();
      pre.append(chunk.element);
      pre.dataset.lines = Number(pre.dataset.lines ?? 0) + chunk.lines;
    }
    // Read all, then write all: one layout per frame.
    for (const pre of atEnd) pre.scrollTop = pre.scrollHeight;
    if (pending.length) schedule();
  };
  const schedule = () => {
    if (!scheduled) { scheduled = true; requestAnimationFrame(flush); }
  };

  const open = () => {
    const url = new URL(section.dataset.log, location.href);
    url.searchParams.set("after", lastSeq);
    source = new EventSource(url);
    source.addEventListener("lines", (event) => {
      lastSeq = Number(event.lastEventId) || lastSeq;
      for (const line of JSON.parse(event.data)) pending.push(line);
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
    source.addEventListener("error", (event) => {
      source.close();
      if (event.data) {
        // The server's answer, not a dropped connection: say it and stop.
        ended = true;
        const problem = document.createElement("p");
        problem.className = "error";
        problem.textContent = JSON.parse(event.data).error;
        section.prepend(problem);
        return;
      }
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
