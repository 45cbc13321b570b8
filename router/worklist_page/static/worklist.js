// radrouter AI worklist: polls /api/worklist and renders it; posts radiologist feedback.
"use strict";

const POLL_MS = 5000;
const VIEWER_SIZE = 768;
const LANE_TEXT = { stat: "STAT", urgent: "URGENT", routine: "ROUTINE" };
const VERDICT_TEXT = {
  present: "Present",
  absent: "Absent",
  not_assessed: "Not assessed",
  failed: "Failed",
};

let lastPayload = "";
// Who is signed in (GET /auth/session): null when the router runs without authentication,
// and then the reader types their name; otherwise the server records the signed-in user.
let session = null;
const SIGN_IN_URL = "/auth/login?next=%2Fworklist";
const drafts = new Map(); // result id -> comment being typed, kept across refreshes
// The larger view: the slices that hold one finding, stepped with buttons or arrow keys.
const viewer = { data: null, index: 0, resultId: null };

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "className") node.className = value;
    else if (name === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function clock(epochSeconds) {
  return new Date(epochSeconds * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min ${Math.round(seconds - minutes * 60)} s`;
  const hours = Math.floor(minutes / 60);
  return `${hours} h ${minutes - hours * 60} min`;
}

function ago(epochSeconds, now) {
  return `${duration(Math.max(0, now - epochSeconds))} ago`;
}

function studyName(study) {
  return study.accession_number ? `accession ${study.accession_number}` : "this study";
}

function badge(priority, raised) {
  return el(
    "span",
    {},
    el("span", { className: `badge badge-${priority}` }, LANE_TEXT[priority] || priority),
    raised ? el("span", { className: "raised" }, "raised by AI") : null,
  );
}

function feedbackState(feedback) {
  if (!feedback) return "No feedback yet.";
  const who = feedback.reader ? ` by ${feedback.reader}` : "";
  const word = feedback.agree ? "Agreed" : "Disagreed";
  const more = feedback.count > 1 ? ` (${feedback.count} statements)` : "";
  return `${word}${who} at ${clock(feedback.at)}${more}.`;
}

function resultItem(study, result) {
  const name = `${result.algorithm}${result.algorithm_version ? " " + result.algorithm_version : ""}`;
  const text = el(
    "div",
    { className: "result-text" },
    el(
      "p",
      {},
      el("span", { className: "algorithm" }, name),
      ": ",
      el("span", { className: `verdict verdict-${result.verdict}` }, VERDICT_TEXT[result.verdict] || result.verdict),
    ),
    result.reason ? el("p", { className: "reason" }, result.reason) : null,
    el("p", { className: "timing" }, `Flagged ${duration(result.last_image_to_flag_s)} after the last image.`),
  );
  const item = el("li", { className: "result", dataset: { resultId: result.result_id ?? "" } });
  if (result.thumbnail_url) {
    const link = el(
      "a",
      {
        href: `${result.thumbnail_url}?size=${VIEWER_SIZE}`,
        target: "_blank",
        rel: "noopener",
        className: "key-image-link",
        title: "Open the slices of this finding",
        dataset: { resultId: result.result_id },
      },
      el("img", {
        className: "key-image",
        src: result.thumbnail_url,
        alt: `Key image of the ${result.algorithm} finding for ${studyName(study)}, region outlined`,
        width: 160,
        loading: "lazy",
      }),
    );
    if (result.slices_url) {
      link.addEventListener("click", (event) => {
        event.preventDefault();
        openViewer(study, result);
      });
    }
    item.append(link);
  }
  item.append(text);
  if (result.result_id !== null) {
    text.append(
      session && !session.may_give_feedback
        ? el("p", { className: "feedback-state" }, `${feedbackState(result.feedback)} Radiologists give feedback.`)
        : feedbackForm(study, result),
    );
  }
  return item;
}

function feedbackForm(study, result) {
  const id = result.result_id;
  const inputId = `comment-${id}`;
  const what = `the ${result.algorithm} result for ${studyName(study)}`;
  const input = el("input", {
    id: inputId,
    type: "text",
    maxlength: 2000,
    autocomplete: "off",
    className: "comment",
    dataset: { resultId: id },
  });
  input.value = drafts.get(id) || "";
  input.addEventListener("input", () => drafts.set(id, input.value));
  const state = el("span", { className: "feedback-state", role: "status" }, feedbackState(result.feedback));
  const button = (agree) => {
    const node = el(
      "button",
      {
        type: "button",
        className: agree ? "agree" : "disagree",
        "aria-label": `${agree ? "Agree" : "Disagree"} with ${what}`,
        dataset: { resultId: id, agree: String(agree) },
      },
      agree ? "Agree" : "Disagree",
    );
    node.addEventListener("click", () => sendFeedback(id, agree, input, state));
    return node;
  };
  return el(
    "div",
    { className: "feedback", role: "group", "aria-label": `Feedback on ${what}` },
    el("label", { for: inputId }, "Comment"),
    input,
    button(true),
    button(false),
    state,
  );
}

function jsonHeaders() {
  const headers = { "Content-Type": "application/json" };
  if (session && session.csrf_token) headers["X-CSRF-Token"] = session.csrf_token;
  return headers;
}

async function sendFeedback(resultId, agree, input, state) {
  const body = { agree, comment: input.value };
  if (!session) body.reader = document.getElementById("reader").value.trim();
  state.textContent = "Saving…";
  try {
    const response = await fetch(`/api/results/${resultId}/feedback`, {
      method: "POST",
      headers: jsonHeaders(),
      body: JSON.stringify(body),
    });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const stored = await response.json();
    drafts.delete(resultId);
    input.value = "";
    state.textContent = `Saved: ${stored.agree ? "agreed" : "disagreed"} at ${clock(stored.at)}.`;
    lastPayload = ""; // show the stored statement on the next refresh
  } catch (error) {
    state.textContent = `Not saved (${error.message}); please try again.`;
  }
}

function studyRow(study, now) {
  const arrived = el(
    "time",
    { datetime: new Date(study.arrived_at * 1000).toISOString() },
    clock(study.arrived_at),
  );
  return el(
    "tr",
    { className: `lane-${study.priority}`, dataset: { studyUid: study.study_uid, priority: study.priority } },
    el("td", { className: "priority" }, badge(study.priority, study.raised)),
    el("td", { className: "reason" }, study.reason || "No AI flag raised"),
    el("td", { className: "accession" }, study.accession_number || "–"),
    el("td", { className: "description" }, study.study_description || "–"),
    el("td", { className: "modality" }, study.modalities.join(", ") || "–"),
    el(
      "td",
      { className: "arrived" },
      arrived,
      el("br"),
      el("span", { className: "ago", dataset: { epoch: study.arrived_at } }, ago(study.arrived_at, now)),
    ),
    el("td", { className: "time-to-flag" }, duration(study.last_image_to_flag_s)),
    el("td", {}, el("ul", { className: "results" }, ...study.results.map((r) => resultItem(study, r)))),
  );
}

function render(data) {
  const focused = document.activeElement;
  const focusedId = focused && focused.id ? focused.id : null;
  const selection = focused && "selectionStart" in focused ? focused.selectionStart : null;
  const body = document.querySelector("#worklist tbody");
  body.replaceChildren(...data.studies.map((study) => studyRow(study, data.generated_at)));
  document.getElementById("empty").hidden = data.studies.length > 0;
  if (focusedId) {
    const again = document.getElementById(focusedId);
    if (again) {
      again.focus();
      if (selection !== null && "setSelectionRange" in again) again.setSelectionRange(selection, selection);
    }
  }
}

function imageName(data, slice) {
  const parts = [];
  if (data.series_number !== null) parts.push(`series ${data.series_number}`);
  if (slice.instance_number !== null) parts.push(`image ${slice.instance_number}`);
  if (slice.frame_number !== null) parts.push(`frame ${slice.frame_number}`);
  return parts.length ? parts.join(" ") : `slice ${slice.index + 1}`;
}

async function openViewer(study, result) {
  const dialog = document.getElementById("viewer");
  viewer.data = null;
  viewer.resultId = result.result_id;
  document.getElementById("viewer-title").textContent =
    `${result.algorithm} finding, ${studyName(study)}`;
  document.getElementById("viewer-caption").textContent = "Loading the slices…";
  document.getElementById("viewer-image").removeAttribute("src");
  if (!dialog.open) dialog.showModal();
  try {
    const response = await fetch(result.slices_url, { cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    viewer.data = await response.json();
    showSlice(viewer.data.key_index);
  } catch (error) {
    document.getElementById("viewer-caption").textContent =
      `Could not load the slices (${error.message}).`;
  }
}

function showSlice(index) {
  const data = viewer.data;
  if (!data) return;
  const count = data.slices.length;
  viewer.index = Math.max(0, Math.min(count - 1, index));
  const slice = data.slices[viewer.index];
  const name = imageName(data, slice);
  const key = viewer.index === data.key_index ? " · key image" : "";
  const image = document.getElementById("viewer-image");
  image.src = `${slice.image_url}&size=${VIEWER_SIZE}`;
  image.alt = `${name}: slice ${viewer.index + 1} of ${count} holding the finding, outlined`;
  image.dataset.index = String(viewer.index);
  document.getElementById("viewer-caption").textContent =
    `${name} · slice ${viewer.index + 1} of ${count}${key}`;
  document.getElementById("viewer-previous").disabled = viewer.index === 0;
  document.getElementById("viewer-next").disabled = viewer.index === count - 1;
}

function viewerKey(event) {
  const steps = { ArrowLeft: -1, ArrowUp: -1, PageUp: -1, ArrowRight: 1, ArrowDown: 1, PageDown: 1 };
  if (!viewer.data) return;
  if (event.key in steps) showSlice(viewer.index + steps[event.key]);
  else if (event.key === "Home") showSlice(0);
  else if (event.key === "End") showSlice(viewer.data.slices.length - 1);
  else return;
  event.preventDefault();
}

function setUpViewer() {
  const dialog = document.getElementById("viewer");
  document.getElementById("viewer-previous").addEventListener("click", () => showSlice(viewer.index - 1));
  document.getElementById("viewer-next").addEventListener("click", () => showSlice(viewer.index + 1));
  document.getElementById("viewer-close").addEventListener("click", () => dialog.close());
  dialog.addEventListener("keydown", viewerKey);
  dialog.addEventListener("close", () => {
    // Back to the thumbnail that opened it (the list may have been re-rendered meanwhile).
    const opener = document.querySelector(`a.key-image-link[data-result-id="${viewer.resultId}"]`);
    viewer.data = null;
    if (opener) opener.focus();
  });
}

async function refresh() {
  const status = document.getElementById("status");
  try {
    const response = await fetch("/api/worklist", { cache: "no-store" });
    if (response.status === 401) {
      signedOut("Your session has ended.");
      return;
    }
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const text = await response.text();
    const data = JSON.parse(text);
    const comparable = JSON.stringify(data.studies);
    if (comparable !== lastPayload) {
      lastPayload = comparable;
      render(data);
    }
    for (const span of document.querySelectorAll("span.ago")) {
      span.textContent = ago(Number(span.dataset.epoch), data.generated_at);
    }
    status.classList.remove("error");
    status.textContent = `${data.studies.length} studies · updated ${clock(data.generated_at)} · refreshes every ${POLL_MS / 1000} s`;
  } catch (error) {
    status.classList.add("error");
    status.textContent = `Could not refresh the worklist (${error.message}); retrying.`;
  }
}

// The session the server's sign-in opened; null when the router runs without authentication.
async function loadSession() {
  const response = await fetch("/auth/session", { cache: "no-store" });
  if (response.status === 401) {
    window.location.assign(SIGN_IN_URL);
    throw new Error("not signed in");
  }
  if (!response.ok) throw new Error(`HTTP ${response.status}`);
  const who = await response.json();
  return who.authentication ? who : null;
}

function showSession() {
  document.getElementById("reader-field").hidden = true;
  document.getElementById("signed-in").hidden = false;
  document.getElementById("signed-in-as").textContent =
    `Signed in as ${session.user} (${session.roles.join(", ")})`;
  document.getElementById("feedback-csv").hidden = !session.may_administer;
  document.getElementById("sign-out").addEventListener("click", async () => {
    await fetch("/auth/logout", { method: "POST", headers: jsonHeaders(), body: "{}" });
    signedOut("You have signed out.");
  });
}

let polling = null;

function signedOut(why) {
  if (polling !== null) clearInterval(polling);
  session = null;
  document.getElementById("signed-in").hidden = true;
  document.querySelector("main").hidden = true;
  const status = document.getElementById("status");
  status.classList.remove("error");
  status.replaceChildren(`${why} `, el("a", { href: SIGN_IN_URL, id: "sign-in-again" }, "Sign in again"), ".");
}

document.addEventListener("DOMContentLoaded", async () => {
  try {
    session = await loadSession();
  } catch (error) {
    document.getElementById("status").textContent = `Could not check who is signed in (${error.message}).`;
    return;
  }
  if (session) {
    showSession();
  } else {
    const reader = document.getElementById("reader");
    reader.value = localStorage.getItem("radrouter.reader") || "";
    reader.addEventListener("change", () => localStorage.setItem("radrouter.reader", reader.value.trim()));
  }
  setUpViewer();
  refresh();
  polling = setInterval(refresh, POLL_MS);
});
