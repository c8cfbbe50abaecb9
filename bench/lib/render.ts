/**
 * Re-renders the tables of a finished run from its raw JSON, without
 * measuring again (e.g. to paste into RESULTS.md):
 *
 *   node dist/bench/lib/render.js bench/.work/pg-<time>.json [--text]
 */
import { readFileSync } from 'node:fs';
import { machineText, type Machine } from './machine.js';
import { buildTables, tablesMarkdown, tablesText, type ReportInput } from './report.js';

interface RawRun {
  machine: Machine;
  settings: Record<string, number>;
  background?: { before: number; after: number };
  report: ReportInput;
}

const [file, flag] = process.argv.slice(2);
if (!file) {
  process.stderr.write('usage: render.js <bench/.work/*.json> [--text]\n');
  process.exit(2);
}
const raw = JSON.parse(readFileSync(file, 'utf8')) as RawRun;
const tables = buildTables(raw.report);
const bg = raw.background
  ? `background load (other processes, nothing of ours running): ${Math.round(raw.background.before * 100)}% busy before, ${Math.round(raw.background.after * 100)}% after\n`
  : '';
process.stdout.write(`${machineText(raw.machine)}\nsettings: ${JSON.stringify(raw.settings)}\n${bg}\n`);
process.stdout.write(flag === '--text' ? tablesText(tables) : tablesMarkdown(tables));
