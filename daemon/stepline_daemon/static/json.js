// The API writes NaN and ±Infinity as bare tokens (as W&B does), which JSON.parse
// rejects. Outside strings, each such token becomes a tagged string that the
// reviver turns back into the number.
const NUM_TAG = "\u0000stepline-number:";

export function parseJSON(text) {
  if (!/NaN|Infinity/.test(text)) return JSON.parse(text);
  let out = "";
  let from = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (inString) {
      // A backslash escapes the next character, whatever it is; a bare quote ends the string.
      if (c === "\\") i++;
      else if (c === '"') inString = false;
      continue;
    }
    if (c === '"') {
      inString = true;
      continue;
    }
    let token = null;
    if (c === "N" && text.startsWith("NaN", i)) token = "NaN";
    else if (c === "I" && text.startsWith("Infinity", i)) token = "Infinity";
    else if (c === "-" && text.startsWith("-Infinity", i)) token = "-Infinity";
    if (token !== null) {
      out += text.slice(from, i) + JSON.stringify(NUM_TAG + token);
      i += token.length - 1;
      from = i + 1;
    }
  }
  out += text.slice(from);
  return JSON.parse(out, (_key, v) =>
    typeof v === "string" && v.startsWith(NUM_TAG) ? Number(v.slice(NUM_TAG.length)) : v,
  );
}
