// The try-it page: every loaded translation model, side by side, for each chosen target language.
"use strict";

const SCRIPTS = ["Han", "Arabic", "Cyrillic", "Tibetan", "Mongolian", "Latin", "Hangul", "Hiragana", "Katakana",
                 "Yi", "Greek", "Hebrew", "Devanagari", "Thai", "Georgian", "Armenian"];
const SCRIPT_RES = SCRIPTS.map((name) => [name, new RegExp(`\\p{Script=${name}}`, "u")]);
const LETTER = /\p{L}/gu;

// The script most letters of `text` are in ("Common" without letters), as swcm.script_tokens.dominant_script.
function dominantScript(text) {
  const counts = new Map();
  for (const letter of text.match(LETTER) || []) {
    const found = SCRIPT_RES.find(([, re]) => re.test(letter));
    const name = found ? found[0] : "other";
    counts.set(name, (counts.get(name) || 0) + 1);
  }
  let best = "Common", most = 0;
  for (const [name, n] of counts) if (n > most) { best = name; most = n; }
  return best;
}

const state = { models: [], languages: [] };
const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value; else if (value !== undefined && value !== null) node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function fmt(value) { return typeof value === "number" ? value.toFixed(1) : "–"; }

// "test chrF++ 17.0, BLEU 3.1 on ug · validation chrF++ 16.2": what the model measured for `lang`.
function scoreLine(model, lang) {
  const parts = [];
  const test = model.scores && model.scores.test;
  if (test) {
    const row = test.languages[lang];
    if (row) parts.push(`test chrF++ ${fmt(row.chrf)}, BLEU ${fmt(row.bleu)} on ${lang}`);
    else parts.push(`test chrF++ ${fmt(test.mean.chrf)} (mean; not tested on ${lang})`);
  }
  const valid = model.scores && model.scores.validation;
  if (valid && typeof valid.chrf === "number") parts.push(`validation chrF++ ${fmt(valid.chrf)}`);
  return parts.length ? parts.join(" · ") : "no measured scores";
}

function translators() { return state.models.filter((m) => m.task === "mt"); }

function setUp() {
  const source = $("source-lang");
  for (const lang of state.languages) source.append(el("option", { value: lang.code }, `${lang.name} (${lang.code})`));
  const targets = new Map();
  for (const model of translators()) for (const lang of model.languages) targets.set(lang.code, lang);
  // Checked at first: the languages the models were tested on (else all but Chinese).
  const tested = new Set(translators().flatMap((m) => Object.keys((m.scores.test || {}).languages || {})));
  const fieldset = $("targets");
  for (const [code, lang] of targets) {
    const id = `target-${code}`;
    const checked = tested.size ? tested.has(code) : code !== "zh";
    const box = el("input", { type: "checkbox", id, name: "target", value: code });
    box.checked = checked;
    fieldset.append(el("label", { for: id }, box, ` ${lang.name} (${code})`));
  }
  $("models-info").textContent = "Models: " + state.models.map((m) =>
    `${m.name} (${m.variant || m.model_type}, ${m.task_name}, ${m.engine} engine)`).join("; ");
}

async function postJSON(path, body) {
  const response = await fetch(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  const data = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) throw new Error(data.error || `HTTP ${response.status}`);
  return data;
}

async function translate(event) {
  event.preventDefault();
  const q = $("source-text").value.trim();
  if (!q) { $("status").textContent = "Type something to translate first."; $("source-text").focus(); return; }
  const source = $("source-lang").value;
  const targets = [...document.querySelectorAll('#targets input[type="checkbox"]:checked')].map((box) => box.value);
  if (!targets.length) { $("status").textContent = "Choose at least one language to translate into."; return; }
  const button = $("translate-button");
  button.disabled = true;
  $("status").textContent = "Translating…";
  const results = $("results");
  results.replaceChildren();
  const jobs = [];
  for (const target of targets) {
    const lang = state.languages.find((l) => l.code === target) || { name: target, scripts: [] };
    const panes = el("div", { class: "panes" });
    results.append(el("section", { class: "target", "data-target": target },
                      el("h2", {}, `${lang.name} (${target})`), panes));
    for (const model of translators().filter((m) => m.targets.includes(target))) {
      const output = el("p", { class: "output", lang: target, dir: "auto" }, "…");
      const script = el("p", { class: "script" }, "");
      const pane = el("article", { class: "pane", "data-model": model.name, "data-target": target, "aria-busy": "true" },
                      el("h3", {}, `${model.name}${model.variant && model.variant !== model.name ? ` (${model.variant})` : ""}`),
                      el("p", { class: "score" }, scoreLine(model, target)), output, script);
      panes.append(pane);
      jobs.push(postJSON("/translate", { q, source, target, model: model.name }).then((reply) => {
        output.textContent = reply.translatedText;
        const found = dominantScript(reply.translatedText);
        const expected = (lang.scripts || []);
        const match = expected.includes(found);
        script.textContent = `script: ${found}` + (expected.length ? (match ? " ✓" : ` (expected ${expected.join(" or ")})`) : "");
        script.className = "script " + (expected.length ? (match ? "match" : "mismatch") : "");
        pane.dataset.script = found;
        if (reply.detectedLanguage) $("detected").textContent =
          `detected: ${reply.detectedLanguage.language} (confidence ${reply.detectedLanguage.confidence})`;
      }).catch((error) => {
        pane.classList.add("error");
        output.textContent = error.message;
      }).finally(() => { pane.setAttribute("aria-busy", "false"); }));
    }
  }
  await Promise.all(jobs);
  button.disabled = false;
  $("status").textContent = `Done: ${jobs.length} translation${jobs.length === 1 ? "" : "s"}.`;
  results.dataset.done = "true";
}

async function main() {
  const [models, languages] = await Promise.all([fetch("/models").then((r) => r.json()), fetch("/languages").then((r) => r.json())]);
  state.models = models;
  const scripts = new Map(models.flatMap((m) => m.languages.map((l) => [l.code, l.scripts])));
  state.languages = languages.map((l) => ({ ...l, scripts: scripts.get(l.code) || [] }));
  setUp();
  $("translate-form").addEventListener("submit", translate);
  $("source-text").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) $("translate-form").requestSubmit();
  });
  document.body.dataset.ready = "true";
}

main().catch((error) => { $("status").textContent = `Could not load the models: ${error.message}`; });
