// The BullMQ side of the queue benchmark (bench/queue.sh), in the same shape
// as reelmesh's load generator (bench/queue/load):
//
//   node bench/queue/bullmq.mjs worker --port 6379 --concurrency 16
//       A Worker with a no-op processor; prints "ready" and runs until
//       SIGTERM/SIGINT. Its own process, as reelmesh's render worker is.
//   node bench/queue/bullmq.mjs load --port 6379 --jobs 2000 --producers 16 --warmup 200
//       Subscribes to completions with QueueEvents, then P producers call
//       queue.add one job at a time (N jobs in all) and it waits for every
//       "completed" event. Prints one JSON object like reelmesh's:
//       throughput (jobs/s, first add -> last completed event), add
//       latency and add -> completed latency, p50/p99/mean/max in ms.
//
// BullMQ and ioredis are loaded from --node-modules (default
// .tools/bench-node/node_modules, where bench/queue.sh installs the versions
// pinned in bench/queue/package.json).
import { createRequire } from "node:module";
import { performance } from "node:perf_hooks";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));

function parseArgs(argv) {
  const args = {
    mode: argv[0],
    host: "127.0.0.1",
    port: 6379,
    queue: "reelmesh-bench",
    jobs: 2000,
    producers: 1,
    warmup: 200,
    concurrency: 16,
    timeoutSecs: 300,
    nodeModules: path.join(here, "..", "..", ".tools", "bench-node", "node_modules"),
  };
  const names = {
    "--host": "host",
    "--port": "port",
    "--queue": "queue",
    "--jobs": "jobs",
    "--producers": "producers",
    "--warmup": "warmup",
    "--concurrency": "concurrency",
    "--timeout-secs": "timeoutSecs",
    "--node-modules": "nodeModules",
  };
  for (let i = 1; i < argv.length; i += 2) {
    const name = names[argv[i]];
    if (!name || i + 1 >= argv.length) throw new Error(`unknown or incomplete option ${argv[i]}`);
    const value = argv[i + 1];
    args[name] = typeof args[name] === "number" ? Number(value) : value;
  }
  if (args.mode !== "worker" && args.mode !== "load") {
    throw new Error("usage: bullmq.mjs worker|load [--port P] [--jobs N] [--producers P] ...");
  }
  return args;
}

const args = parseArgs(process.argv.slice(2));
const require = createRequire(path.join(path.resolve(args.nodeModules), "noop.js"));
const { Queue, Worker, QueueEvents } = require("bullmq");
const IORedis = require("ioredis");
const connection = { host: args.host, port: args.port, maxRetriesPerRequest: null };

if (args.mode === "worker") {
  await runWorker();
} else {
  await runLoad();
}

async function runWorker() {
  const worker = new Worker(args.queue, async () => null, {
    connection,
    concurrency: args.concurrency,
  });
  worker.on("error", (err) => console.error(`bullmq worker: ${err}`));
  await worker.waitUntilReady();
  console.log("ready");
  const stop = async () => {
    await worker.close();
    process.exit(0);
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

async function runLoad() {
  const queue = new Queue(args.queue, { connection });
  await queue.waitUntilReady();
  // Follow completions from the newest event in the stream on, so nothing
  // of this run is missed and nothing of an earlier run is counted.
  const redis = new IORedis(connection);
  const newest = await redis.xrevrange(`bull:${args.queue}:events`, "+", "-", "COUNT", 1);
  await redis.quit();
  const events = new QueueEvents(args.queue, {
    connection,
    lastEventId: newest.length ? newest[0][0] : "0-0",
  });
  await events.waitUntilReady();
  const ended = new Map();
  // Jobs of the current run still waiting for their event, once all are submitted.
  let pending = new Set();
  let allEnded = () => {};
  const record = (completed) => ({ jobId }) => {
    if (!ended.has(jobId)) ended.set(jobId, { completed, at: performance.now() });
    if (pending.delete(jobId) && pending.size === 0) allEnded();
  };
  events.on("completed", record(true));
  events.on("failed", record(false));

  async function run(jobs) {
    let next = 0;
    const submitted = [];
    const producer = async () => {
      while (next++ < jobs) {
        const before = performance.now();
        const job = await queue.add("noop", { seconds: 0 });
        const answered = performance.now();
        submitted.push({ id: job.id, before, answered });
      }
    };
    await Promise.all(Array.from({ length: args.producers }, producer));
    pending = new Set(submitted.filter((job) => !ended.has(job.id)).map((job) => job.id));
    if (pending.size > 0) {
      let timer;
      const timeout = new Promise((_, reject) => {
        timer = setTimeout(
          () => reject(new Error(`${pending.size} of ${jobs} jobs did not end within ${args.timeoutSecs} s`)),
          args.timeoutSecs * 1000,
        );
      });
      await Promise.race([new Promise((resolve) => (allEnded = resolve)), timeout]);
      clearTimeout(timer);
    }
    const failed = submitted.filter((job) => !ended.get(job.id).completed).length;
    if (failed > 0) throw new Error(`${failed} of ${jobs} no-op jobs failed`);
    const first = Math.min(...submitted.map((job) => job.before));
    const last = Math.max(...submitted.map((job) => ended.get(job.id).at));
    return {
      seconds: (last - first) / 1000,
      submit: summary(submitted.map((job) => job.answered - job.before)),
      e2e: summary(submitted.map((job) => ended.get(job.id).at - job.before)),
    };
  }

  if (args.warmup > 0) {
    console.error(`bullmq: warm-up, ${args.warmup} jobs from ${args.producers} producers`);
    await run(args.warmup);
  }
  console.error(`bullmq: ${args.jobs} jobs from ${args.producers} producers`);
  const measured = await run(args.jobs);
  console.log(
    JSON.stringify({
      tool: "bullmq",
      producers: args.producers,
      jobs: args.jobs,
      warmup: args.warmup,
      seconds: round3(measured.seconds),
      throughput: round3(args.jobs / measured.seconds),
      submit_ms: measured.submit,
      e2e_ms: measured.e2e,
    }),
  );
  await events.close();
  await queue.close();
}

// Nearest-rank percentiles, as in bench/queue/load/src/stats.rs.
function summary(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const at = (p) => sorted[Math.min(Math.max(Math.ceil((p / 100) * sorted.length), 1), sorted.length) - 1];
  const mean = sorted.reduce((sum, value) => sum + value, 0) / sorted.length;
  return {
    p50: round3(at(50)),
    p99: round3(at(99)),
    mean: round3(mean),
    max: round3(sorted[sorted.length - 1]),
  };
}

function round3(value) {
  return Math.round(value * 1000) / 1000;
}
