// Chart preferences, kept across pages and visits.
export const prefs = {
  smoothing: Number(localStorage.getItem("stepline.smoothing") ?? 0),
  log: localStorage.getItem("stepline.log") === "1",
  save() {
    localStorage.setItem("stepline.smoothing", String(this.smoothing));
    localStorage.setItem("stepline.log", this.log ? "1" : "0");
  },
};
