#!/usr/bin/env node
'use strict';
// Writes contracts/abi/<Name>.json = {contractName, abi, bytecode} for each deployable contract
// from forge's out/ directory, so the Python side can deploy without Node or forge.
//   node tools/export-abi.js          write abi/*.json
//   node tools/export-abi.js --check  exit 1 if abi/*.json differ from a fresh build
const fs = require('fs');
const path = require('path');

const DEPLOYABLE = ['Staking', 'Rewards'];
const root = path.resolve(__dirname, '..');
const check = process.argv.includes('--check');
let stale = false;

fs.mkdirSync(path.join(root, 'abi'), { recursive: true });
for (const name of DEPLOYABLE) {
  const artifact = JSON.parse(fs.readFileSync(path.join(root, 'out', `${name}.sol`, `${name}.json`), 'utf8'));
  const bytecode = artifact.bytecode && artifact.bytecode.object;
  if (!bytecode || bytecode === '0x') throw new Error(`${name}: empty bytecode`);
  if (Object.keys(artifact.bytecode.linkReferences || {}).length) throw new Error(`${name}: needs linking`);
  const out = {
    contractName: name,
    compiler: artifact.metadata && artifact.metadata.compiler ? `solc ${artifact.metadata.compiler.version}` : undefined,
    abi: artifact.abi,
    bytecode,
  };
  const text = JSON.stringify(out, null, 1) + '\n';
  const file = path.join(root, 'abi', `${name}.json`);
  if (check) {
    const current = fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : '';
    if (current !== text) {
      console.error(`abi/${name}.json is stale: run contracts/build.sh and commit it`);
      stale = true;
    }
  } else if (!fs.existsSync(file) || fs.readFileSync(file, 'utf8') !== text) {
    fs.writeFileSync(file, text);
  }
}
process.exit(stale ? 1 : 0);
