#!/usr/bin/env node
'use strict';
// Offline stand-in for native `solc`, built on solc-js (wasm). Supports what forge uses:
//   solc --version
//   solc [--base-path P] [--include-path P]... [--allow-paths a,b] --standard-json  (stdin -> stdout)
// Imports missing from the standard-json input are read from disk like native solc does:
// relative to --base-path, then each --include-path, restricted to the allowed directories.
const fs = require('fs');
const path = require('path');
const solc = require(path.join(__dirname, '..', 'node_modules', 'solc'));

const args = process.argv.slice(2);
if (args.includes('--version') || args.includes('-v')) {
  process.stdout.write('solc, the solidity compiler commandline interface\nVersion: ' + solc.version() + '\n');
  process.exit(0);
}
if (!args.includes('--standard-json')) {
  process.stderr.write('solc wrapper: only --version and --standard-json are supported\n');
  process.exit(2);
}

let basePath = process.cwd();
const includePaths = [];
const allowed = [];
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--base-path') basePath = path.resolve(args[++i]);
  else if (args[i] === '--include-path') includePaths.push(path.resolve(args[++i]));
  else if (args[i] === '--allow-paths') allowed.push(...args[++i].split(',').filter(Boolean).map((p) => path.resolve(p)));
}
allowed.push(basePath, ...includePaths);

function isAllowed(file) {
  return allowed.some((dir) => file === dir || file.startsWith(dir + path.sep));
}

function findImports(unit) {
  const candidates = path.isAbsolute(unit)
    ? [unit]
    : [basePath, ...includePaths].map((dir) => path.resolve(dir, unit));
  for (const file of candidates) {
    if (isAllowed(file) && fs.existsSync(file)) {
      return { contents: fs.readFileSync(file, 'utf8') };
    }
  }
  return { error: 'File not found: ' + unit };
}

const chunks = [];
process.stdin.on('data', (c) => chunks.push(c));
process.stdin.on('end', () => {
  const input = Buffer.concat(chunks).toString('utf8');
  // no process.exit(): stdout to a pipe is asynchronous and must drain first
  process.stdout.write(solc.compile(input, { import: findImports }));
});
