// The daemon's read API: paths, JSON requests and live streams.

import { parseJSON } from "./json.js";

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

const enc = encodeURIComponent;
export const projectPath = (project) => `/api/projects/${enc(project)}`;
export const runPath = (project, id) => `${projectPath(project)}/runs/${enc(id)}`;

export async function getJSON(path, params, signal) {
  const url = new URL(path, location.origin);
  for (const [k, v] of Object.entries(params ?? {})) {
    if (v !== null && v !== undefined && v !== "") url.searchParams.set(k, String(v));
  }
  const resp = await fetch(url, { signal, headers: { Accept: "application/json" } });
  const text = await resp.text();
  let body = null;
  try {
    body = parseJSON(text);
  } catch {
    // reported below
  }
  if (!resp.ok) {
    const err = body?.error;
    throw new ApiError(resp.status, err?.code ?? "http", err?.message ?? `${resp.status} ${resp.statusText}`);
  }
  if (body === null) throw new ApiError(resp.status, "bad_json", `malformed JSON from ${url.pathname}`);
  return body;
}

// A run's live rows and state changes, past step `after` (-1: from the start).
export function openStream(project, id, after) {
  const url = new URL(`${runPath(project, id)}/stream`, location.origin);
  url.searchParams.set("after", String(after));
  return new EventSource(url);
}
