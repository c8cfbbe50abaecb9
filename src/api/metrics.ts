/**
 * A tiny Prometheus registry, text exposition format 0.0.4, no dependency.
 *
 * The increments run on the relay's hot path (one per statement, one per
 * chunk of bytes), so each is a Map lookup keyed by the joined label values
 * and an addition: no allocation beyond the key string, no sorting, no
 * formatting. All the string work happens in render(), when a scraper asks.
 *
 * Nothing here may carry a secret: label values are target names,
 * protocols, verdicts and directions, never subjects, statements or tokens
 * (those belong in the audit trail, which has access control; /metrics has
 * none).
 */

/** Label values joined with a byte that never occurs in a target name or a verdict. */
const SEP = '\u0000';

/** Escaping of a label value in the text format: backslash, double quote, newline. */
function escapeLabel(value: string): string {
  return value.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
}

function formatLabels(names: readonly string[], values: readonly string[], extra?: [string, string]): string {
  const parts = names.map((n, i) => `${n}="${escapeLabel(values[i] ?? '')}"`);
  if (extra) parts.push(`${extra[0]}="${escapeLabel(extra[1])}"`);
  return parts.length ? `{${parts.join(',')}}` : '';
}

/** Go's strconv formatting as Prometheus prints it: +Inf, -Inf, NaN, else the shortest decimal. */
function formatValue(v: number): string {
  if (v === Infinity) return '+Inf';
  if (v === -Infinity) return '-Inf';
  if (Number.isNaN(v)) return 'NaN';
  return String(v);
}

interface Series {
  values: string[];
  value: number;
}

abstract class Metric {
  constructor(
    readonly name: string,
    readonly help: string,
    readonly labelNames: readonly string[],
  ) {}

  abstract render(out: string[]): void;

  protected header(out: string[], type: string): void {
    out.push(`# HELP ${this.name} ${this.help.replace(/\\/g, '\\\\').replace(/\n/g, '\\n')}`);
    out.push(`# TYPE ${this.name} ${type}`);
  }
}

class ScalarMetric extends Metric {
  protected readonly series = new Map<string, Series>();

  constructor(
    name: string,
    help: string,
    labelNames: readonly string[],
    private readonly type: 'counter' | 'gauge',
  ) {
    super(name, help, labelNames);
  }

  protected add(values: readonly string[], n: number): void {
    this.seriesFor(values).value += n;
  }

  /** The series of these label values, created at 0 on first use. */
  protected seriesFor(values: readonly string[]): Series {
    const key = values.length === 1 ? values[0]! : values.join(SEP);
    let s = this.series.get(key);
    if (!s) this.series.set(key, (s = { values: [...values], value: 0 }));
    return s;
  }

  /** The current value for these label values (0 when never touched). */
  get(...values: string[]): number {
    return this.series.get(values.length === 1 ? values[0]! : values.join(SEP))?.value ?? 0;
  }

  render(out: string[]): void {
    this.header(out, this.type);
    for (const s of this.series.values()) {
      out.push(`${this.name}${formatLabels(this.labelNames, s.values)} ${formatValue(s.value)}`);
    }
  }
}

export class Counter extends ScalarMetric {
  constructor(name: string, help: string, labelNames: readonly string[]) {
    super(name, help, labelNames, 'counter');
  }

  /** Counters only go up: a negative or non-finite n is ignored. */
  inc(values: readonly string[], n = 1): void {
    if (n > 0 && Number.isFinite(n)) this.add(values, n);
  }

  /** The series itself, for a caller that counts once per command and keeps it (no label array or key per increment). */
  seriesOf(values: readonly string[]): { value: number } {
    return this.seriesFor(values);
  }
}

export class Gauge extends ScalarMetric {
  constructor(name: string, help: string, labelNames: readonly string[]) {
    super(name, help, labelNames, 'gauge');
  }

  inc(values: readonly string[], n = 1): void {
    this.add(values, n);
  }

  dec(values: readonly string[], n = 1): void {
    this.add(values, -n);
  }
}

/** A histogram without labels: cumulative buckets are computed at render time from per-bucket counts. */
export class Histogram extends Metric {
  private readonly counts: number[];
  private sum = 0;
  private count = 0;

  constructor(
    name: string,
    help: string,
    readonly buckets: readonly number[],
  ) {
    super(name, help, []);
    this.counts = new Array<number>(buckets.length + 1).fill(0);
  }

  observe(v: number): void {
    if (!Number.isFinite(v)) return;
    let i = 0;
    while (i < this.buckets.length && v > this.buckets[i]!) i++;
    this.counts[i]!++;
    this.sum += v;
    this.count++;
  }

  get observations(): number {
    return this.count;
  }

  render(out: string[]): void {
    this.header(out, 'histogram');
    let cumulative = 0;
    this.buckets.forEach((le, i) => {
      cumulative += this.counts[i]!;
      out.push(`${this.name}_bucket{le="${formatValue(le)}"} ${cumulative}`);
    });
    out.push(`${this.name}_bucket{le="+Inf"} ${this.count}`);
    out.push(`${this.name}_sum ${formatValue(this.sum)}`);
    out.push(`${this.name}_count ${this.count}`);
  }
}

/** Approval latency buckets, seconds: a human decision takes seconds to an hour. */
export const APPROVAL_LATENCY_BUCKETS: readonly number[] = [1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600];

export type Direction = 'client_to_upstream' | 'upstream_to_client';

/**
 * The gateway's metrics. Create one per process and hand it to the gateway
 * (sessions, statements, bytes) and the API (approval decisions, /metrics).
 */
export class Metrics {
  readonly sessionsActive = new Gauge('sluice_sessions_active', 'Client sessions open now.', ['target', 'protocol']);
  readonly sessionsTotal = new Counter('sluice_sessions_total', 'Client sessions accepted since start.', ['target', 'protocol']);
  readonly statementsTotal = new Counter(
    'sluice_statements_total',
    'Statements (PostgreSQL) and commands (Redis) judged by policy, by verdict.',
    ['target', 'verdict'],
  );
  readonly bytesTotal = new Counter('sluice_bytes_total', 'Bytes relayed, by direction.', ['target', 'direction']);
  readonly approvalsTotal = new Counter('sluice_approvals_total', 'Approval requests ended, by outcome.', ['outcome']);
  readonly approvalLatencySeconds = new Histogram(
    'sluice_approval_latency_seconds',
    'Time from an approval request to an approver\'s decision (approve or deny), seconds.',
    APPROVAL_LATENCY_BUCKETS,
  );

  readonly recordingBackpressureTotal = new Counter(
    'sluice_recording_backpressure_total',
    'Times a session stopped reading because its recording fell behind (recording.max_backlog).',
    ['target'],
  );

  private readonly all: readonly Metric[] = [
    this.sessionsActive,
    this.sessionsTotal,
    this.statementsTotal,
    this.bytesTotal,
    this.approvalsTotal,
    this.approvalLatencySeconds,
    this.recordingBackpressureTotal,
  ];

  sessionStarted(target: string, protocol: string): void {
    const labels = [target, protocol];
    this.sessionsTotal.inc(labels);
    this.sessionsActive.inc(labels);
  }

  sessionEnded(target: string, protocol: string): void {
    this.sessionsActive.dec([target, protocol]);
  }

  /** Series of statementsTotal by target, then verdict: counted per statement or command, so looked up without building a key. */
  readonly #statementSeries = new Map<string, Map<string, { value: number }>>();
  #lastTarget: string | undefined;
  #lastVerdict: string | undefined;
  #lastSeries: { value: number } | undefined;

  /** verdict: the audit verdict (`allowed`, `denied`, `approved`, ...). */
  statement(target: string, verdict: string): void {
    // A session reports the same (target, verdict) over and over: the last series is kept at hand.
    if (target === this.#lastTarget && verdict === this.#lastVerdict) {
      this.#lastSeries!.value += 1;
      return;
    }
    let byVerdict = this.#statementSeries.get(target);
    if (!byVerdict) this.#statementSeries.set(target, (byVerdict = new Map()));
    let series = byVerdict.get(verdict);
    if (!series) byVerdict.set(verdict, (series = this.statementsTotal.seriesOf([target, verdict])));
    series.value += 1;
    this.#lastTarget = target;
    this.#lastVerdict = verdict;
    this.#lastSeries = series;
  }

  bytes(target: string, direction: Direction, n: number): void {
    this.bytesTotal.inc([target, direction], n);
  }

  /** A session's reads paused until its recording catches up. */
  recordingBackpressure(target: string): void {
    this.recordingBackpressureTotal.inc([target]);
  }

  /** An approver decided (through the API): latency and outcome. */
  approvalDecided(seconds: number, outcome: 'approved' | 'denied' = 'approved'): void {
    this.approvalLatencySeconds.observe(seconds);
    this.approvalsTotal.inc([outcome]);
  }

  /** A request ended without a decision (the gateway calls this from the outcome). */
  approvalEnded(outcome: 'expired' | 'cancelled'): void {
    this.approvalsTotal.inc([outcome]);
  }

  /** The text exposition format, one family after another, ending with a newline. */
  render(): string {
    const out: string[] = [];
    for (const m of this.all) m.render(out);
    return out.join('\n') + '\n';
  }
}
