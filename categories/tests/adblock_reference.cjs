// Reference verdicts for categories/tests/adblock_reference.rs.
//
// Usage: node adblock_reference.cjs LIST URLS OUT   (NODE_PATH must reach
// @ghostery/adblocker; .ci/run installs it)
// Loads the adblock LIST into Ghostery's adblocker and writes one line per
// URL of URLS to OUT: 1 if a request to it is blocked, 0 if not. Requests
// are first-party page loads (type "document"): a gateway sees the page and
// every request it makes and cannot tell their types apart, so the rules
// that only apply to some types, to third-party requests or on some pages
// are not domain-level rules (komugate reports them as skipped).
'use strict';
const fs = require('fs');
const { FiltersEngine, Request } = require('@ghostery/adblocker');

const [listPath, urlsPath, outPath] = process.argv.slice(2);
const engine = FiltersEngine.parse(fs.readFileSync(listPath, 'utf8'), {
  loadNetworkFilters: true,
  loadCosmeticFilters: false,
});
const out = [];
for (const line of fs.readFileSync(urlsPath, 'utf8').split('\n')) {
  const url = line.trim();
  if (!url) continue;
  const r = engine.match(Request.fromRawDetails({ url, sourceUrl: url, type: 'document' }));
  out.push(r.match ? '1' : '0');
}
fs.writeFileSync(outPath, out.join('\n') + '\n');
