'use strict';
// The Caf.js side of spine-bench's `ca` workload: --cas CAs, each called by --callers clients
// (1 by default; more make a hot CA), each client with its own caf_cli session (its own
// session id) to its CA, calling `increment(1)` in a closed loop. Turns whose reply
// arrives inside the measured window (after --warmup, for --seconds) are counted, as `ca load`
// counts them. Prints `{"window":"open"}` when the measured window opens (spine-bench reads the
// servers' CPU then), then one JSON line: turns, seconds, turns_per_second, p50/p99/max latency
// (ms), errors, the first error, and every counted turn's latency in microseconds.
//
//   node load.js --url http://127.0.0.1:3000 --cas 100 --seconds 10 --warmup 3 [--callers 1]
const caf_cli = require('caf_cli');

const args = {url: 'http://127.0.0.1:3000', cas: 1, seconds: 10, warmup: 3,
              prefix: 'load', connect: 100, callers: 1};
for (let i = 2; i < process.argv.length; i += 2) {
    const key = process.argv[i].replace(/^--/, '');
    if (!(key in args) || i + 1 >= process.argv.length) {
        console.error('usage: node load.js [--url U] [--cas N] [--seconds S]' +
                      ' [--warmup S] [--prefix P] [--connect N] [--callers N]');
        process.exit(2);
    }
    const v = process.argv[i + 1];
    args[key] = (typeof args[key] === 'number') ? Number(v) : v;
}

const nowMs = () => Number(process.hrtime.bigint()) / 1e6;
const latencies = [];
let turns = 0;
let errors = 0;
let firstError = null;
let start = 0;
let end = 0;

// Client k calls CA floor(k / callers) over its own session.
const open = (k) => new Promise((resolve, reject) => {
    const name = 'o' + args.prefix + Math.floor(k / args.callers) + '-counter';
    const s = new caf_cli.Session(args.url, name, {
        from: name,
        session: 'c' + (k % args.callers),
        appPublisher: 'root',
        appLocalName: 'counter',
        disableBackchannel: true,
        maxRetries: 3,
        log: () => {}
    });
    // One first turn creates (or activates) the CA before the clock starts.
    s.onopen = () => s.increment(1).getPromise().then(() => resolve(s), reject);
    s.onclose = (err) => {
        // caf_cli's error keeps the WebSocket's own error (the cause) in `err.err`.
        const cause = err && err.err;
        const why = cause ? ' (' + (cause.message || cause.code || String(cause)) + ')' : '';
        reject(new Error('session ' + name + ' closed: ' +
                         ((err && err.message) || 'no error') + why));
    };
});

const drive = async (s) => {
    while (true) {
        const sent = nowMs();
        if (sent >= end) {
            return;
        }
        let ok = true;
        try {
            await s.increment(1).getPromise();
        } catch (err) {
            ok = false;
            if (firstError === null) {
                firstError = String(err && err.message || err);
            }
        }
        const done = nowMs();
        if (done < start || done > end) {
            continue;
        }
        if (ok) {
            turns++;
            latencies.push(done - sent);
        } else {
            errors++;
        }
    }
};

const quantile = (sorted, q) => sorted.length === 0 ? 0 :
    sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)];

const main = async () => {
    const sessions = [];
    // Sessions open and CAs are created, --connect at a time, before the clock starts.
    const clients = args.cas * Math.max(1, args.callers);
    for (let i = 0; i < clients; i += args.connect) {
        const batch = [];
        for (let j = i; j < Math.min(clients, i + args.connect); j++) {
            batch.push(open(j));
        }
        sessions.push(...await Promise.all(batch));
    }
    start = nowMs() + args.warmup * 1000;
    end = start + args.seconds * 1000;
    setTimeout(() => console.log(JSON.stringify({window: 'open'})),
               Math.max(0, start - nowMs()));
    await Promise.all(sessions.map(drive));
    sessions.forEach((s) => s.close());
    latencies.sort((a, b) => a - b);
    const round = (x) => Math.round(x * 1000) / 1000;
    const report = JSON.stringify({
        cas: args.cas,
        turns,
        seconds: args.seconds,
        turns_per_second: round(turns / args.seconds),
        p50_ms: round(quantile(latencies, 0.5)),
        p99_ms: round(quantile(latencies, 0.99)),
        max_ms: round(latencies.length ? latencies[latencies.length - 1] : 0),
        errors,
        first_error: firstError,
        latencies_us: latencies.map((ms) => Math.round(ms * 1000))
    });
    // Exit only once the report is written out (sessions would keep the process alive).
    process.stdout.write(report + '\n', () => process.exit(0));
};

main().catch((err) => {
    console.error('error: ' + (err && err.stack || err));
    process.exit(1);
});
