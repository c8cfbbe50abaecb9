/**
 * Turns measured cells into the tables both benches print: throughput per
 * contender and workload, the ratios that matter, and where the CPU went.
 */
import { findCell, summarize, type Absent, type CellResult } from './harness.js';
import { fmtFixed, fmtInt, fmtPercent, fmtRatio, median, renderMarkdown, renderText, type Cell, type Table } from './table.js';

export interface ReportInput {
  /** e.g. "pgbench -S, 8 clients" */
  title: string;
  /** "TPS" or "requests/s" */
  rateUnit: string;
  /** "transaction" or "request" */
  opName: string;
  workloads: string[];
  /** Contenders that ran, in display order. */
  contenders: string[];
  absent: Absent[];
  cells: CellResult[];
  /** Ratios to print as [numerator, denominator] contender names. */
  ratios: Array<[string, string]>;
  rounds: number;
}

function rateCell(cells: CellResult[], w: string, c: string): Cell {
  const cell = findCell(cells, w, c);
  const s = summarize(cell);
  if (s.rate === undefined) return cell && cell.errors.length ? 'failed' : undefined;
  return fmtInt(s.rate);
}

/**
 * Ratio of the medians, plus the median and spread of the per-round ratios:
 * within one round the two contenders ran minutes apart at most, so the
 * per-round ratio is less exposed to drift than either number alone. On the
 * shared 2-vCPU hosts the benches run on, the machine's own speed moved by
 * up to 1.7x within one run (direct redis-benchmark SET -P 16: 600k
 * requests/s in the first rounds, 1.05M in the last), and the two medians
 * can then come from rounds of different speeds; the median of the
 * per-round ratios pairs each round with itself.
 */
function ratioCell(cells: CellResult[], w: string, a: string, b: string): Cell {
  const ca = findCell(cells, w, a);
  const cb = findCell(cells, w, b);
  const overall = fmtRatio(summarize(ca).rate, summarize(cb).rate);
  if (overall === undefined || !ca || !cb || ca.errors.length || cb.errors.length || ca.rounds.length < 2) return overall;
  const perRound = ca.rounds.map((m, i) => m.rate / (cb.rounds[i]?.rate ?? NaN)).filter((x) => Number.isFinite(x));
  if (perRound.length < 2) return overall;
  return `${overall} (${fmtRatio(median(perRound), 1)}; ${Math.min(...perRound).toFixed(2)}-${Math.max(...perRound).toFixed(2)})`;
}

export function buildTables(r: ReportInput): Table[] {
  const absentNotes = r.absent.map((a) => `${a.name}: ${a.state}: ${a.reason}`);
  const errorNotes = r.cells.filter((c) => c.errors.length > 0).map((c) => `${c.contender} / ${c.workload}: ${c.errors.length} run(s) failed: ${c.errors[0]}`);

  const throughput: Table = {
    title: `${r.title}: ${r.rateUnit} (median of ${r.rounds} round${r.rounds === 1 ? '' : 's'})`,
    header: ['contender', ...r.workloads],
    rows: r.contenders.map((c) => [c, ...r.workloads.map((w) => rateCell(r.cells, w, c))]),
    notes: [...absentNotes, ...errorNotes],
  };

  const ratios: Table = {
    title: `${r.title}: ratios of ${r.rateUnit}`,
    header: ['ratio', ...r.workloads],
    rows: r.ratios
      .filter(([a, b]) => r.contenders.includes(a) && r.contenders.includes(b))
      .map(([a, b]) => [`${a}/${b}`, ...r.workloads.map((w) => ratioCell(r.cells, w, a, b))]),
    notes: r.rounds > 1 ? ['ratio of the medians; in parentheses the median of the per-round ratios, then the lowest and highest ratio within one round'] : [],
  };

  const gateways = r.contenders.filter((c) => c !== 'direct');
  const cpu: Table = {
    title: `${r.title}: gateway process CPU per ${r.opName} in µs (share of one core)`,
    header: ['gateway', ...r.workloads],
    rows: gateways.map((c) => [
      c,
      ...r.workloads.map((w) => {
        const s = summarize(findCell(r.cells, w, c));
        return s.cpuMicrosPerOp === undefined ? undefined : `${fmtFixed(s.cpuMicrosPerOp)} (${fmtFixed(s.gatewayCores, 2)})`;
      }),
    ]),
    notes: ['user+system CPU of the gateway process from /proc/<pid>/stat over each run, divided by the operations the client counted'],
  };

  const threads: Table = {
    title: `${r.title}: gateway CPU per ${r.opName} by thread, µs: event loop / recording thread / other`,
    header: ['gateway', ...r.workloads],
    rows: gateways.map((c) => [
      c,
      ...r.workloads.map((w) => {
        const t = summarize(findCell(r.cells, w, c)).threadMicrosPerOp;
        return t === undefined ? undefined : `${fmtFixed(t.eventLoop)} / ${fmtFixed(t.lowPriority)} / ${fmtFixed(t.other)}`;
      }),
    ]),
    notes: [
      'from /proc/<pid>/task/*/stat: the main thread; the threads below its priority (the recording seal thread, nice 19); the rest (libuv pool, GC, compiler, threads that ended)',
    ],
  };

  const busy: Table = {
    title: `${r.title}: whole machine busy during the runs (all cores)`,
    header: ['contender', ...r.workloads],
    rows: r.contenders.map((c) => [c, ...r.workloads.map((w) => fmtPercent(summarize(findCell(r.cells, w, c)).machineBusy))]),
    notes: ['from /proc/stat; the database, the benchmark client and the gateway all share these cores'],
  };
  return [throughput, ratios, cpu, threads, busy];
}

export function tablesText(tables: Table[]): string {
  return tables.map(renderText).join('\n');
}

export function tablesMarkdown(tables: Table[]): string {
  return tables.map(renderMarkdown).join('\n');
}
