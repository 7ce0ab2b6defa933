// The page shell around a view: its lifecycle, the breadcrumbs and the error box.

import { ApiError } from "./api.js";
import { h, mount } from "./dom.js";

// Everything a view opens (requests, streams, charts, observers) closes with it.
export class ViewContext {
  constructor(name) {
    this.name = name;
    this.closed = false;
    this.aborter = new AbortController();
    this.cleanups = [];
  }
  get signal() {
    return this.aborter.signal;
  }
  onClose(fn) {
    this.cleanups.push(fn);
  }
  close() {
    this.closed = true;
    this.aborter.abort();
    for (const fn of this.cleanups.splice(0).reverse()) fn();
  }
}

export const app = () => document.getElementById("app");

export function setCrumbs(...items) {
  const nav = document.getElementById("crumbs");
  mount(
    nav,
    ...items.flatMap((item, i) => [
      i ? h("span", { class: "sep" }, "/") : null,
      item.href ? h("a", { href: item.href }, item.text) : h("span", null, item.text),
    ]),
  );
}

export function showError(err) {
  document.body.dataset.state = "error";
  const where = err instanceof ApiError ? `${err.status} ${err.code}` : "error";
  mount(
    app(),
    h("div", { class: "error-box" }, h("strong", null, where), h("p", null, err.message ?? String(err))),
  );
}
