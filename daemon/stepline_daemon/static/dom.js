// Building and replacing DOM nodes.

const present = (c) => c !== null && c !== undefined && c !== false;

// Replace a node's children; null, undefined and false stand for "nothing here".
export function mount(node, ...children) {
  node.replaceChildren(...children.flat(Infinity).filter(present));
}

export function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs ?? {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity).filter(present)) node.append(c instanceof Node ? c : String(c));
  return node;
}
