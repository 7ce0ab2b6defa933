// Hash routes of the dashboard's pages; router.js reads them back.

const enc = encodeURIComponent;

export const link = {
  projects: () => "#/",
  project: (p) => `#/p/${enc(p)}`,
  run: (p, id, runNo = null) => `#/p/${enc(p)}/r/${enc(id)}${runNo === null ? "" : `?run_no=${runNo}`}`,
  compare: (p, ids) => `#/p/${enc(p)}/compare?runs=${ids.map(enc).join(",")}`,
  tree: (p, id = null) => `#/p/${enc(p)}/tree${id === null ? "" : `/${enc(id)}`}`,
};
