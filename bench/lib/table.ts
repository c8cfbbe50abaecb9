/**
 * Plain-text tables for the terminal and for pasting into RESULTS.md: the
 * same rows print as aligned text and as a Markdown table.
 */

export type Cell = string | number | undefined;

export interface Table {
  title: string;
  header: string[];
  rows: Cell[][];
  /** Lines printed under the table (what a column means, which contender was skipped). */
  notes?: string[];
}

function cellText(c: Cell): string {
  if (c === undefined) return '-';
  if (typeof c === 'number') return Number.isFinite(c) ? String(c) : '-';
  return c;
}

/** Right-aligns columns that hold numbers, left-aligns the rest. */
function numericColumn(rows: Cell[][], i: number): boolean {
  return rows.every((r) => r[i] === undefined || typeof r[i] === 'number' || /^[\d.,x%µ ()-]+$/.test(String(r[i])));
}

export function renderText(t: Table): string {
  const cells = [t.header, ...t.rows.map((r) => r.map(cellText))];
  const widths = t.header.map((_, i) => Math.max(...cells.map((r) => (r[i] ?? '').length)));
  const numeric = t.header.map((_, i) => numericColumn(t.rows, i));
  const line = (r: string[]): string =>
    r.map((c, i) => (numeric[i] ? c.padStart(widths[i] ?? 0) : c.padEnd(widths[i] ?? 0))).join('  ').trimEnd();
  const out = [t.title, line(t.header), widths.map((w) => '-'.repeat(w)).join('  '), ...cells.slice(1).map(line)];
  for (const n of t.notes ?? []) out.push(`  ${n}`);
  return `${out.join('\n')}\n`;
}

export function renderMarkdown(t: Table): string {
  const numeric = t.header.map((_, i) => numericColumn(t.rows, i));
  const out = [
    `**${t.title}**`,
    '',
    `| ${t.header.join(' | ')} |`,
    `|${numeric.map((n) => (n ? '---:' : ':---')).join('|')}|`,
    ...t.rows.map((r) => `| ${r.map(cellText).join(' | ')} |`),
  ];
  if (t.notes?.length) out.push('', ...t.notes.map((n) => `- ${n}`));
  return `${out.join('\n')}\n`;
}

// --- number formatting ---------------------------------------------------------

/** 12345.6 -> "12,346" */
export function fmtInt(n: number | undefined): string | undefined {
  return n === undefined || !Number.isFinite(n) ? undefined : Math.round(n).toLocaleString('en-US');
}

/** A ratio as "0.87x". */
export function fmtRatio(a: number | undefined, b: number | undefined): string | undefined {
  return a === undefined || b === undefined || !(b > 0) ? undefined : `${(a / b).toFixed(2)}x`;
}

export function fmtFixed(n: number | undefined, digits = 1): string | undefined {
  return n === undefined || !Number.isFinite(n) ? undefined : n.toFixed(digits);
}

export function fmtPercent(fraction: number | undefined): string | undefined {
  return fraction === undefined ? undefined : `${Math.round(fraction * 100)}%`;
}

// --- aggregation -----------------------------------------------------------------

export function mean(xs: number[]): number | undefined {
  return xs.length === 0 ? undefined : xs.reduce((a, b) => a + b, 0) / xs.length;
}

export function median(xs: number[]): number | undefined {
  if (xs.length === 0) return undefined;
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 === 1 ? s[mid] : ((s[mid - 1] ?? 0) + (s[mid] ?? 0)) / 2;
}
