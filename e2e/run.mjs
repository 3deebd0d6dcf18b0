#!/usr/bin/env node
// End-to-end browser tests for peerjsd: the published peerjs 1.5.5 client in
// headless Chromium (Debian's /usr/bin/chromium, driven by playwright-core)
// against a real signaling server process started here.
//
// Prints one line per check on stdout: "ok - <name>" or "not ok - <name>: <reason>"
// (skips: "ok - <name> # SKIP <why>"), then one summary line
// "e2e: N passed, N failed, N skipped". Exit code 1 if any check failed.
// Diagnostics (timings, server logs of failing groups) go to stderr.
//
// Env:
//   E2E_SERVER=peerjsd|reference  which server (default peerjsd)
//   PEERJSD_BIN                   peerjsd binary (default ../target/release/peerjsd)
//   CHROMIUM_BIN                  browser (default /usr/bin/chromium)
//   E2E_ONLY=substring            run only checks whose name contains it
//   E2E_VERBOSE=1                 echo server output and browser console to stderr

import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import os from "node:os";
import http from "node:http";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { isDeepStrictEqual } from "node:util";
import { randomBytes } from "node:crypto";
import { chromium } from "playwright-core";
import jwt from "jsonwebtoken";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const SERVER_KIND = process.env.E2E_SERVER || "peerjsd";
const VERBOSE = process.env.E2E_VERBOSE === "1";
const ONLY = process.env.E2E_ONLY || "";
const CHROMIUM_BIN = process.env.CHROMIUM_BIN || "/usr/bin/chromium";
const PEERJSD_BIN = path.resolve(HERE, process.env.PEERJSD_BIN || "../target/release/peerjsd");
const REFERENCE_CLI = path.join(HERE, "node_modules/peer/dist/bin/peerjs.js");
const RUN = randomBytes(3).toString("hex"); // makes ids unique per run
const SERVER_PATH = "/myapp"; // a non-root path, so path handling is exercised too

// Headless Chromium, offline WebRTC and a fake camera. See README.md for why each is here.
const CHROMIUM_ARGS_ALL = [
  "--headless=new",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--disable-features=WebRtcHideLocalIpsWithMdns",
  "--allow-loopback-in-peer-connection",
  "--use-fake-device-for-media-stream",
  "--use-fake-ui-for-media-stream",
];
// Debugging aid: E2E_CHROMIUM_DROP="--flag,--other" leaves flags out to see what breaks.
const DROP = (process.env.E2E_CHROMIUM_DROP || "").split(",").filter(Boolean);
const CHROMIUM_ARGS = CHROMIUM_ARGS_ALL.filter((a) => !DROP.includes(a));

// ---------------------------------------------------------------- utilities

function log(...a) {
  process.stderr.write(a.join(" ") + "\n");
}

function oneLine(s) {
  return String(s).replace(/\s+/g, " ").trim().slice(0, 600);
}

class CheckFailure extends Error {}
// Thrown by a check that does not apply to this server (after asserting why, where it can).
class CheckSkip extends Error {}

function assert(cond, msg) {
  if (!cond) throw new CheckFailure(msg);
}

function assertEq(actual, expected, what) {
  if (!isDeepStrictEqual(actual, expected)) {
    throw new CheckFailure(`${what}: expected ${JSON.stringify(expected)}, got ${JSON.stringify(actual)}`);
  }
}

function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, rej) => {
      timer = setTimeout(() => rej(new CheckFailure(`${what}: no result within ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

// Log lines seen so far plus the waits for lines to come: `add(item)` records one and wakes
// the waits it matches; `wait(pred, ms, what)` resolves with the first recorded or coming
// item matching pred, or rejects after ms.
function lineLog() {
  const seen = [];
  const waiters = [];
  return {
    seen,
    add(item) {
      seen.push(item);
      for (const w of [...waiters]) {
        if (w.pred(item)) {
          waiters.splice(waiters.indexOf(w), 1);
          w.resolve(item);
        }
      }
    },
    wait(pred, ms, what) {
      const hit = seen.find(pred);
      if (hit) return Promise.resolve(hit);
      const w = { pred };
      return withTimeout(new Promise((resolve) => {
        w.resolve = resolve;
        waiters.push(w);
      }), ms, what).finally(() => {
        if (waiters.includes(w)) waiters.splice(waiters.indexOf(w), 1);
      });
    },
  };
}

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

function httpGet(url, timeoutMs = 1000, headers = {}) {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { timeout: timeoutMs, headers }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (c) => (body += c));
      res.on("end", () => resolve({ status: res.statusCode, headers: res.headers, body }));
    });
    req.on("timeout", () => req.destroy(new Error("timeout")));
    req.on("error", reject);
  });
}

// ------------------------------------------------------- static page server

const STATIC = {
  "/": [path.join(HERE, "pages/index.html"), "text/html; charset=utf-8"],
  "/harness.js": [path.join(HERE, "pages/harness.js"), "text/javascript; charset=utf-8"],
  "/peerjs.min.js": [path.join(HERE, "node_modules/peerjs/dist/peerjs.min.js"), "text/javascript; charset=utf-8"],
  "/peerjs.min.js.map": [path.join(HERE, "node_modules/peerjs/dist/peerjs.min.js.map"), "application/json"],
};

async function startStaticServer() {
  for (const [file] of Object.values(STATIC)) {
    if (!existsSync(file)) throw new Error(`missing ${file} (run "npm ci" in e2e/)`);
  }
  const server = http.createServer((req, res) => {
    const pathname = new URL(req.url, "http://x").pathname;
    if (pathname === "/favicon.ico") {
      res.writeHead(204).end();
      return;
    }
    const entry = STATIC[pathname];
    if (!entry) {
      res.writeHead(404, { "content-type": "text/plain" }).end("not found");
      return;
    }
    res.writeHead(200, { "content-type": entry[1], "cache-control": "no-store" });
    res.end(readFileSync(entry[0]));
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return { server, url: `http://127.0.0.1:${server.address().port}/` };
}

// ---------------------------------------------------- signaling server child

// Server processes still running; killed if the runner exits early.
const children = new Set();
process.on("exit", () => {
  for (const c of children) c.kill("SIGKILL");
  // A stopped Chromium process would otherwise outlive us (Playwright kills the browser's
  // process group with SIGKILL on exit, which also ends stopped processes; resume anyway).
  for (const e of extraBrowsers) {
    e.thaw();
    try {
      if (e.pid) process.kill(-e.pid, "SIGKILL");
    } catch {
      /* already gone */
    }
  }
});
for (const sig of ["SIGINT", "SIGTERM"]) {
  process.on(sig, () => {
    log(`# ${sig}: stopping`);
    process.exit(130);
  });
}

// opts: {key, rooms, maxRoomPeers, args (extra peerjsd flags), env (extra environment)}
async function startSignalingServer(opts = {}) {
  const port = await freePort();
  const key = opts.key || "peerjs";
  let cmd;
  let args;
  let readyUrl;
  if (SERVER_KIND === "reference") {
    cmd = process.execPath;
    args = [REFERENCE_CLI, "--host", "127.0.0.1", "--port", String(port), "--path", SERVER_PATH, "--key", key,
      "--alive_timeout", "60000", "--expire_timeout", "5000"];
    readyUrl = `http://127.0.0.1:${port}${SERVER_PATH}`;
  } else {
    cmd = PEERJSD_BIN;
    args = ["--host", "127.0.0.1", "--port", String(port), "--path", SERVER_PATH, "--key", key,
      "--alive-timeout", "60000", "--expire-timeout", "5000"];
    if (opts.rooms) args.push("--rooms", opts.rooms);
    if (opts.maxRoomPeers) args.push("--max-room-peers", String(opts.maxRoomPeers));
    if (opts.args) args.push(...opts.args);
    readyUrl = `http://127.0.0.1:${port}/health`;
  }
  const child = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, RUST_LOG: process.env.RUST_LOG || "info", ...opts.env } });
  children.add(child);
  child.on("exit", () => children.delete(child));
  const output = [];
  const logLines = lineLog(); // stdout lines parsed as JSON (peerjsd logs one JSON object a line)
  let exited = null;
  const onData = (stream) => (chunk) => {
    for (const line of chunk.toString().split("\n")) {
      if (!line) continue;
      output.push(`[${stream}] ${line}`);
      if (output.length > 400) output.shift();
      if (VERBOSE) log(`  server ${stream}: ${line}`);
      let obj = null;
      try {
        obj = JSON.parse(line);
      } catch {
        continue;
      }
      if (!obj || typeof obj !== "object") continue;
      logLines.add(obj);
    }
  };
  child.stdout.on("data", onData("out"));
  child.stderr.on("data", onData("err"));
  const exitPromise = new Promise((resolve) => child.on("exit", (code, sig) => {
    exited = { code, sig };
    resolve(exited);
  }));
  child.on("error", (e) => output.push(`[spawn] ${e.message}`));

  const desc = `${path.basename(cmd)} ${args.join(" ")}`;
  const deadline = Date.now() + 15000;
  let last = "";
  for (;;) {
    if (exited) throw new Error(`server exited (${JSON.stringify(exited)}) before it was ready: ${desc}; output: ${oneLine(output.slice(-5).join(" | "))}`);
    try {
      const r = await httpGet(readyUrl, 500);
      if (r.status === 200) break;
      last = `status ${r.status}`;
    } catch (e) {
      last = e.message;
    }
    if (Date.now() > deadline) {
      child.kill("SIGKILL");
      throw new Error(`server not ready after 15 s (${readyUrl}: ${last}): ${desc}`);
    }
    await new Promise((r) => setTimeout(r, 50)); // readiness poll interval
  }
  if (VERBOSE) log(`  started ${desc}`);

  return {
    port,
    key,
    desc,
    output,
    // Wait for a JSON log line matching pred (also looks at the lines already logged).
    waitLog: logLines.wait,
    async stop() {
      if (exited) return;
      const t0 = Date.now();
      child.kill("SIGTERM");
      // peerjs-server 1.0.2 does not exit on SIGTERM while sockets are open; do not wait long.
      const t = setTimeout(() => child.kill("SIGKILL"), 3000);
      const how = await exitPromise;
      clearTimeout(t);
      log(`# server stopped in ${Date.now() - t0} ms (${how.sig ? `signal ${how.sig}` : `exit ${how.code}`})`);
    },
  };
}

// ------------------------------------------------------------------ browser

let browser;
let pageUrl;

// ---- processes, from /proc

// pid -> {ppid, state} of every process on the machine.
function procTable() {
  const table = new Map();
  for (const pid of readdirSync("/proc").filter((d) => /^\d+$/.test(d))) {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
      const rest = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      table.set(Number(pid), { state: rest[0], ppid: Number(rest[1]) });
    } catch {
      /* process went away */
    }
  }
  return table;
}

function procArgv(pid) {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").filter(Boolean);
  } catch {
    return [];
  }
}

// All descendants of `root` (children, their children, ...).
function descendants(root) {
  const table = procTable();
  const out = [];
  const todo = [root];
  while (todo.length) {
    const parent = todo.pop();
    for (const [pid, p] of table) {
      if (p.ppid === parent) {
        out.push(pid);
        todo.push(pid);
      }
    }
  }
  return out;
}

// True when every thread of `pid` is in the stopped state (T).
function isStopped(pid) {
  const tasks = readdirSync(`/proc/${pid}/task`);
  return tasks.length > 0 && tasks.every((t) => {
    const stat = readFileSync(`/proc/${pid}/task/${t}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2)[0] === "T";
  });
}

// The browser process we spawned (the /usr/bin/chromium wrapper execs it): our child whose
// command line has Playwright's --remote-debugging-pipe and our --e2e-role=<role> marker
// (more than one Chromium may run). Returns {pid, argv}, or null if not found.
function chromiumProcess(role) {
  for (const [pid, p] of procTable()) {
    if (p.ppid !== process.pid) continue;
    const argv = procArgv(pid);
    if (argv.some((a) => a.startsWith("--remote-debugging-pipe")) && argv.includes(`--e2e-role=${role}`)) return { pid, argv };
  }
  return null;
}

// Chromium keeps only the LAST --disable-features switch. Playwright passes its own list
// first, so ours would silently drop it. Launch, read the real command line back, and if
// there is more than one --disable-features, relaunch with a single merged one.
// `role` names the browser on its command line (an unknown switch, which Chromium ignores):
// "main" for the one every check uses, "holder" for the separate one of the silent-holder
// check. Returns {browser, pid} (pid: the browser process, leader of its process group).
// The merged arguments, once known, are reused for later launches (no second relaunch).
let mergedLaunch = null;
async function launchBrowser(role) {
  const base = [...CHROMIUM_ARGS, `--e2e-role=${role}`];
  const launch = (args, ignoreDefaultArgs) =>
    chromium.launch({ executablePath: CHROMIUM_BIN, headless: true, args, ignoreDefaultArgs, timeout: 60000 });
  if (mergedLaunch) {
    const b = await launch([...mergedLaunch.args, `--e2e-role=${role}`], mergedLaunch.ignoreDefaultArgs);
    const proc = chromiumProcess(role);
    const check = (proc ? proc.argv : []).filter((a) => a.startsWith("--disable-features="));
    if (check.length !== 1) {
      await b.close().catch(() => {});
      throw new Error(`could not merge --disable-features: ${JSON.stringify(check)}`);
    }
    return { browser: b, pid: proc.pid };
  }
  let b = await launch(base);
  let proc = chromiumProcess(role);
  if (!proc) {
    log("# warning: could not read the Chromium command line; --disable-features left as passed");
    return { browser: b, pid: null };
  }
  const ours = base.filter((a) => a.startsWith("--disable-features="));
  const theirs = proc.argv.filter((a) => a.startsWith("--disable-features=") && !ours.includes(a));
  if (theirs.length === 0 || ours.length === 0) return { browser: b, pid: proc.pid };
  await b.close();
  const merged = [...new Set([...theirs, ...ours].flatMap((a) => a.slice("--disable-features=".length).split(",")).filter(Boolean))];
  const args = [...base.filter((a) => !ours.includes(a)), `--disable-features=${merged.join(",")}`];
  b = await launch(args, theirs);
  proc = chromiumProcess(role);
  const check = (proc ? proc.argv : []).filter((a) => a.startsWith("--disable-features="));
  if (check.length !== 1) throw new Error(`could not merge --disable-features: ${JSON.stringify(check)}`);
  if (VERBOSE) log(`# ${role}: ${check[0]}`);
  mergedLaunch = { args: args.filter((a) => a !== `--e2e-role=${role}`), ignoreDefaultArgs: theirs };
  return { browser: b, pid: proc.pid };
}

// Chromium's network service: the utility process that owns every socket of that browser,
// WebSockets included (it also answers their pings, not the page). A child of the browser
// process; found by its command line. (Chromium rewrites a child's /proc/<pid>/cmdline to
// one space-separated string, so this matches words, not NUL-separated arguments.)
function networkServicePid(browserPid) {
  const re = /(^|\s)--utility-sub-type=network\.mojom\.NetworkService(\s|$)/;
  return descendants(browserPid).find((pid) => procArgv(pid).some((a) => re.test(a))) ?? null;
}

// Extra browsers a check started (the silent-holder check's own Chromium), with the pid it
// SIGSTOPped. release() resumes and closes; the runner calls it after every check, so a
// check that failed or ran out of time never leaves a stopped process behind.
const extraBrowsers = new Set();

function trackExtraBrowser(browser, pid) {
  const entry = {
    browser,
    pid,
    stopped: null,
    freeze(target) {
      if (!extraBrowsers.has(entry)) throw new CheckFailure("the extra browser was already released");
      entry.stopped = target;
      process.kill(target, "SIGSTOP");
    },
    thaw() {
      if (entry.stopped === null) return;
      try {
        process.kill(entry.stopped, "SIGCONT");
      } catch {
        /* already gone */
      }
      entry.stopped = null;
    },
    async release() {
      if (!extraBrowsers.has(entry)) return;
      entry.thaw();
      try {
        await withTimeout(browser.close(), 10000, "closing the extra browser");
      } catch (e) {
        log(`# ${e.message}; killing its process group ${pid}`);
        try {
          if (pid) process.kill(-pid, "SIGKILL");
        } catch {
          /* already gone */
        }
      }
      extraBrowsers.delete(entry);
    },
  };
  extraBrowsers.add(entry);
  return entry;
}

async function releaseExtraBrowsers() {
  await Promise.all([...extraBrowsers].map((e) => e.release()));
}

const openContexts = new Set();

async function newPeerPage(label, inBrowser = browser) {
  const context = await inBrowser.newContext();
  openContexts.add(context);
  const page = await context.newPage();
  page.label = label;
  page.wsFrames = []; // signaling frames the page received, parsed
  page.wsWaiters = [];
  page.on("websocket", (ws) => {
    ws.on("framereceived", (f) => {
      let msg;
      try {
        msg = JSON.parse(f.payload);
      } catch {
        return;
      }
      const entry = { at: Date.now(), msg };
      page.wsFrames.push(entry);
      for (const w of [...page.wsWaiters]) {
        if (w.pred(msg)) {
          page.wsWaiters.splice(page.wsWaiters.indexOf(w), 1);
          w.resolve(entry);
        }
      }
    });
  });
  page.consoleLines = [];
  page.on("console", (m) => {
    page.consoleLines.push(`${m.type()}: ${m.text()}`);
    if (VERBOSE) log(`  console[${label}] ${m.type()}: ${m.text()}`);
  });
  page.on("pageerror", (e) => log(`  pageerror[${label}]: ${e.message}`));
  await page.goto(pageUrl);
  await page.waitForFunction(() => window.E2E && window.peerjs && window.peerjs.Peer);
  page.closeAll = async () => {
    openContexts.delete(context);
    await context.close().catch(() => {});
  };
  return page;
}

// Wait (Node side) for a signaling frame on `page` matching pred.
function waitWsFrame(page, pred, ms, what) {
  const hit = page.wsFrames.find((e) => pred(e.msg));
  if (hit) return Promise.resolve(hit);
  return withTimeout(new Promise((resolve) => page.wsWaiters.push({ pred, resolve })), ms, what);
}

async function closeAllContexts() {
  await Promise.all([...openContexts].map((c) => c.close().catch(() => {})));
  openContexts.clear();
}

function peerOptions(server, extra = {}) {
  return {
    host: "127.0.0.1",
    port: server.port,
    path: SERVER_PATH,
    key: server.key,
    secure: false,
    debug: 0,
    config: { iceServers: [] },
    ...extra,
  };
}

// Open a Peer in `page`; returns {ok, id} or {ok:false, type, message}.
function openPeer(page, id, opts, ms = 10000) {
  return page.evaluate(([id, opts, ms]) => window.E2E.open(id, opts, ms), [id || null, opts, ms]);
}

async function openPeerOk(page, id, opts) {
  const r = await openPeer(page, id, opts);
  assert(r.ok, `${page.label}: peer did not open: ${r.type} ${JSON.stringify(r.message)}`);
  if (id) assertEq(r.id, id, `${page.label}: open id`);
  return r.id;
}

const ev = (page, fn, arg) => page.evaluate(fn, arg);

// Payloads for the data channel check. Built in the page from these descriptions.
const PAYLOADS = [
  { kind: "string", value: "hello, peer" },
  { kind: "string", value: "unicode: héllo wörld ✓ 你好 🙂" },
  { kind: "string", value: "x".repeat(20000) }, // larger than one chunk of the binary serializer
  { kind: "json", value: { a: 1, b: "two", c: [1, 2, 3], d: { nested: true, n: null }, e: -1.5 } },
  { kind: "json", value: [1, "x", false, { k: "v" }] },
  { kind: "ArrayBuffer", bytes: [0, 1, 2, 3, 127, 128, 254, 255] },
  { kind: "Uint8Array", bytes: Array.from({ length: 300 }, (_, i) => (i * 7) % 256) },
];

function hexOf(bytes) {
  return bytes.map((b) => b.toString(16).padStart(2, "0")).join("");
}

// Send every payload from `from` to `toId` and check `to` received them intact.
async function exchange(from, fromId, to, toId) {
  await ev(to, (id) => window.E2E.clearInbox(id), fromId);
  for (const p of PAYLOADS) {
    const d = p.kind === "json" ? { kind: "json", value: p.value } : p;
    await ev(from, ([id, d]) => window.E2E.send(id, d), [toId, d]);
  }
  const got = await ev(to, ([id, n]) => window.E2E.receive(id, n, 10000), [fromId, PAYLOADS.length]);
  PAYLOADS.forEach((p, i) => {
    const g = got[i];
    const where = `${from.label}→${to.label} message ${i} (${p.kind})`;
    if (p.kind === "string") assertEq(g, { kind: "string", value: p.value }, where);
    else if (p.kind === "json") assertEq(g.value, p.value, where);
    else {
      // peerjs's default (binary) serializer delivers binary data as an ArrayBuffer
      assert(g.kind === "ArrayBuffer" || g.kind === "Uint8Array", `${where}: got ${g.kind}, not binary`);
      assertEq(g.hex, hexOf(p.bytes), where);
    }
  });
}

// ------------------------------------------------------------------- checks

const NAMES = {
  data: "data channel: strings, JSON objects and binary travel both ways intact",
  serverId: "no id: the server's {path}{key}/id gives a 36-char UUID and the peer opens",
  idTaken: "taken id: a second peer gets unavailable-id while the holder is alive",
  idFreed: "taken id: after the holder's page closes a new peer gets the id within seconds (alive-timeout 60 s)",
  silentHolder: "taken id: a holder whose socket went silent (its Chromium's network service SIGSTOPped) loses the id to a new peer within seconds (ping probe, alive-timeout 60 s)",
  reconnect: "disconnect() then reconnect() opens again with the same id and can connect again",
  media: "media call with the fake camera: callee answers and both sides get a playing video track",
  roomMesh: "rooms: four peers with token room1 form a full mesh and all 12 directed messages arrive",
  roomFull: "rooms: a fifth peer in room1 gets server-error \"Room is full\"",
  roomLeave: "rooms: closing one page sends LEAVE and the other three see their connections to it close",
  wrongKey: "wrong key: server-error \"Invalid key provided\"",
  wrongPathNoId: "wrong path, no id: server-error with an empty message (the client only logs \"Could not get an ID from the server.\")",
  wrongPathId: "wrong path, fixed id: network \"Lost connection to server.\"",
  downNoId: "server down, no id: server-error with an empty message (the client only logs \"Could not get an ID from the server.\")",
  downId: "server down, fixed id: network \"Lost connection to server.\"",
};

async function checkData(server) {
  const a = await newPeerPage("A");
  const b = await newPeerPage("B");
  const aId = await openPeerOk(a, `alice-${RUN}`, peerOptions(server));
  const bId = await openPeerOk(b, `bob-${RUN}`, peerOptions(server));
  await ev(a, (id) => window.E2E.connect(id, 15000), bId);
  await ev(b, (id) => window.E2E.waitIncoming(id, 15000), aId);
  await exchange(a, aId, b, bId);
  await exchange(b, bId, a, aId);
  const pair = await ev(a, (id) => window.E2E.selectedPair(id), bId);
  const fmt = (c) => c && `${c.protocol} ${c.address}:${c.port} (${c.type})`;
  log(`# ${NAMES.data}: ICE pair ${pair ? `${fmt(pair.local)} <-> ${fmt(pair.remote)}` : "unknown"}`);
}

async function checkServerId(server) {
  const p = await newPeerPage("P");
  const idUrl = `http://127.0.0.1:${server.port}${SERVER_PATH}/${server.key}/id`;
  const response = p.waitForResponse((res) => res.url().split("?")[0] === idUrl, { timeout: 10000 });
  const r = await openPeer(p, null, peerOptions(server));
  const res = await response.catch(() => null);
  assert(res, `the client made no request to ${idUrl}`);
  assertEq(res.status(), 200, `GET ${idUrl} status`);
  const body = await res.text();
  assert(r.ok, `peer did not open: ${r.type} ${JSON.stringify(r.message)}`);
  assertEq(r.id, body, "opened id vs. the /id response body");
  assert(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/.test(r.id), `id ${JSON.stringify(r.id)} is not a v4 UUID`);
  assertEq(r.id.length, 36, "id length");
  const peerId = await ev(p, () => window.E2E.peer.id);
  assertEq(peerId, r.id, "peer.id");
}

async function checkIdTaken(server) {
  const id = `taken-${RUN}`;
  const holder = await newPeerPage("holder");
  await openPeerOk(holder, id, peerOptions(server));
  const other = await newPeerPage("other");
  const r = await openPeer(other, id, peerOptions(server));
  assertEq({ ok: r.ok, type: r.type, message: r.message }, { ok: false, type: "unavailable-id", message: `ID "${id}" is taken` }, "second peer");
  // The holder is unaffected: still open, and it is the one the server routes to.
  const state = await ev(holder, () => ({ open: window.E2E.peer.open, disconnected: window.E2E.peer.disconnected, errors: window.E2E.events.filter((e) => e.ev === "error") }));
  assertEq(state, { open: true, disconnected: false, errors: [] }, "holder state");
  const third = await newPeerPage("third");
  const tId = await openPeerOk(third, `third-${RUN}`, peerOptions(server));
  await ev(third, (h) => window.E2E.connect(h, 15000), id);
  await ev(holder, (t) => window.E2E.waitIncoming(t, 15000), tId);
}

async function checkIdFreed(server) {
  const id = `freed-${RUN}`;
  const holder = await newPeerPage("holder");
  await openPeerOk(holder, id, peerOptions(server));
  const t0 = Date.now();
  await holder.close(); // the page goes away; its context stays
  const next = await newPeerPage("next");
  const r = await openPeer(next, id, peerOptions(server), 10000);
  const ms = Date.now() - t0;
  assert(r.ok, `new peer with the freed id did not open: ${r.type} ${JSON.stringify(r.message)} (${ms} ms after the holder's page closed)`);
  assert(ms < 5000, `took ${ms} ms after the holder's page closed (limit 5000)`);
  log(`# ${NAMES.idFreed}: id reusable ${ms} ms after the page closed`);
}

// peerjsd's Prometheus counter peerjs_sessions_closed_total{reason="<reason>"}.
async function sessionsClosed(server, reason) {
  const r = await httpGet(`http://127.0.0.1:${server.port}/metrics`, 2000, { accept: "text/plain" });
  assertEq(r.status, 200, "GET /metrics status");
  const m = r.body.match(new RegExp(`^peerjs_sessions_closed_total\\{reason="${reason}"\\} (\\d+)$`, "m"));
  assert(m, `GET /metrics has no peerjs_sessions_closed_total{reason="${reason}"}`);
  return Number(m[1]);
}

// Wait (bounded) until every thread of `pid` is stopped: SIGSTOP takes effect
// asynchronously. This and the server-readiness loop are the suite's only polls.
async function waitStopped(pid, ms) {
  const deadline = Date.now() + ms;
  while (!isStopped(pid)) {
    if (Date.now() > deadline) throw new CheckFailure(`process ${pid} not stopped ${ms} ms after SIGSTOP`);
    await new Promise((r) => setTimeout(r, 5)); // stop-state poll interval
  }
}

const TOOK_OVER = "id holder did not answer a ping; taking the id over";

// The holder's page runs in a Chromium of its own; its network service (the process that
// owns the holder's TCP socket and answers WebSocket pings) is SIGSTOPped. The socket stays
// open (the kernel still ACKs), the page still believes it is connected, but nothing answers:
// a laptop whose network dropped. A new Peer with the same id from the main browser must
// open within 5 s: peerjsd pings the holder, gets no pong within --probe-timeout (1.5 s) and
// replaces it. The reference answers ID-TAKEN until its alive timeout (60 s): asserted, then
// reported as a skip.
async function checkSilentHolder(server) {
  const id = `silent-${RUN}`;
  const reference = SERVER_KIND === "reference";
  const tLaunch = Date.now();
  const launched = await launchBrowser("holder");
  const launchMs = Date.now() - tLaunch;
  const frozen = trackExtraBrowser(launched.browser, launched.pid);
  try {
    assert(launched.pid, "could not find the holder browser's process");
    const holder = await newPeerPage("holder", launched.browser);
    await openPeerOk(holder, id, peerOptions(server));
    const newcomer = await newPeerPage("newcomer");
    const third = await newPeerPage("third");
    const before = reference ? 0 : await sessionsClosed(server, "probe_failed");

    const ns = networkServicePid(launched.pid);
    assert(ns, `no --utility-sub-type=network.mojom.NetworkService process under the holder's browser (pid ${launched.pid})`);
    frozen.freeze(ns);
    await waitStopped(ns, 2000);
    // The page itself runs on (another process) and still sees an open signaling socket.
    const seen = await ev(holder, () => ({ open: window.E2E.peer.open, disconnected: window.E2E.peer.disconnected }));
    assertEq(seen, { open: true, disconnected: false }, "frozen holder's own view");

    const t0 = Date.now();
    const r = await openPeer(newcomer, id, peerOptions(server), 10000);
    const ms = Date.now() - t0;
    log(`# ${NAMES.silentHolder}: holder's Chromium launched in ${launchMs} ms; its network service (pid ${ns}) stopped; the new peer got ${r.ok ? `open ${r.id}` : `${r.type} ${JSON.stringify(r.message)}`} after ${ms} ms`);
    if (reference) {
      assertEq({ ok: r.ok, type: r.type, message: r.message }, { ok: false, type: "unavailable-id", message: `ID "${id}" is taken` }, "new peer (reference)");
      throw new CheckSkip("reference answers unavailable-id until its alive timeout");
    }
    assert(r.ok, `new peer with the silent holder's id did not open: ${r.type} ${JSON.stringify(r.message)} (after ${ms} ms)`);
    assertEq(r.id, id, "new peer's id");
    assert(ms < 5000, `took ${ms} ms (limit 5000)`);

    // The id now routes to the new holder: a third peer opens a data connection to it.
    const tId = await openPeerOk(third, `third-silent-${RUN}`, peerOptions(server));
    await ev(third, (h) => window.E2E.connect(h, 15000), id);
    await ev(newcomer, (t) => window.E2E.waitIncoming(t, 15000), tId);
    await ev(third, (h) => window.E2E.send(h, { kind: "string", value: "to the new holder" }), id);
    assertEq(await ev(newcomer, (t) => window.E2E.receive(t, 1, 10000), tId), [{ kind: "string", value: "to the new holder" }], "message third→new holder");
    await ev(newcomer, (t) => window.E2E.send(t, { kind: "string", value: "from the new holder" }), tId);
    assertEq(await ev(third, (h) => window.E2E.receive(h, 1, 10000), id), [{ kind: "string", value: "from the new holder" }], "message new holder→third");

    // The server replaced the frozen session because its probe failed. The old session's
    // "peer closed" comes up to 2 s later: peerjsd waits that long for a close handshake
    // the frozen side cannot answer.
    const took = await server.waitLog((l) => l.message === TOOK_OVER && l.peer === id, 3000, `server log "${TOOK_OVER}"`);
    await server.waitLog((l) => l.message === "peer replaced by a new socket" && l.peer === id && l.reason === "probe_failed", 3000, `server log "peer replaced by a new socket" (probe_failed)`);
    const closed = await server.waitLog((l) => l.message === "peer closed" && l.peer === id, 5000, `server log "peer closed" for ${id}`);
    assertEq(closed.reason, "probe_failed", `reason of the old session's "peer closed"`);
    log(`# ${NAMES.silentHolder}: old session closed (probe_failed) ${Date.parse(closed.timestamp) - Date.parse(took.timestamp)} ms after the takeover`);
    assertEq(await sessionsClosed(server, "probe_failed") - before, 1, `peerjs_sessions_closed_total{reason="probe_failed"} increase`);

    // Resumed, the old holder reads what waited in its socket: the server had closed it.
    const mark = await ev(holder, () => window.E2E.mark());
    frozen.thaw();
    const lost = await ev(holder, (m) => window.E2E.waitEvent("error", 5000, m).then((e) => ({ type: e.type, message: e.message })), mark);
    assertEq(lost, { type: "network", message: "Lost connection to server." }, "old holder after SIGCONT");
    await ev(holder, (m) => window.E2E.waitEvent("disconnected", 5000, m), mark);
  } finally {
    await frozen.release(); // SIGCONT (if still stopped), then close that browser
  }
}

async function checkReconnect(server) {
  const a = await newPeerPage("A");
  const b = await newPeerPage("B");
  const aId = await openPeerOk(a, `recon-${RUN}`, peerOptions(server));
  const bId = await openPeerOk(b, `peer-${RUN}`, peerOptions(server));
  await ev(a, (id) => window.E2E.connect(id, 15000), bId);
  await ev(b, (id) => window.E2E.waitIncoming(id, 15000), aId);

  const d = await ev(a, () => window.E2E.disconnect(5000));
  assertEq(d, { disconnected: true, open: false }, "state after disconnect()");
  const r = await ev(a, () => window.E2E.reconnect(10000));
  assert(r.ok, `reconnect() did not open: ${r.type} ${JSON.stringify(r.message)}`);
  assertEq(r.id, aId, "id after reconnect()");
  // New connection in both directions after the reconnect: B → A reaches A's new socket.
  const mark = await ev(a, () => window.E2E.mark());
  await ev(b, (id) => window.E2E.connect(id, 15000), aId);
  await ev(a, ([id, m]) => window.E2E.waitIncoming(id, 15000, m), [bId, mark]);
  await ev(b, (id) => window.E2E.send(id, { kind: "string", value: "after reconnect" }), aId);
  const got = await ev(a, (id) => window.E2E.receive(id, 1, 10000), bId);
  assertEq(got[0], { kind: "string", value: "after reconnect" }, "message B→A after reconnect");
  const mark2 = await ev(b, (id) => (window.E2E.inbox.get(id) || []).length, aId);
  await ev(a, (id) => window.E2E.send(id, { kind: "string", value: "back" }), bId);
  const got2 = await ev(b, ([id, n]) => window.E2E.receive(id, n, 10000), [aId, mark2 + 1]);
  assertEq(got2[mark2], { kind: "string", value: "back" }, "message A→B after reconnect");
}

async function checkMedia(server) {
  const caller = await newPeerPage("caller");
  const callee = await newPeerPage("callee");
  await openPeerOk(caller, `caller-${RUN}`, peerOptions(server));
  const calleeId = await openPeerOk(callee, `callee-${RUN}`, peerOptions(server));
  const kinds = await ev(caller, () => window.E2E.getCamera());
  assert(kinds.includes("video"), `fake camera gave tracks ${JSON.stringify(kinds)}`);
  await ev(callee, () => window.E2E.getCamera());
  const [callerSide, calleeSide] = await Promise.all([
    ev(caller, (id) => window.E2E.call(id, 15000), calleeId),
    ev(callee, () => window.E2E.answer(15000)),
  ]);
  for (const [who, s] of [["callee got caller's stream", calleeSide], ["caller got callee's stream", callerSide]]) {
    const video = s.tracks.filter((t) => t.kind === "video");
    assert(video.length >= 1, `${who}: no video track (${JSON.stringify(s.tracks)})`);
    assertEq(video[0].readyState, "live", `${who}: video track state`);
    assert(s.frame.width > 0 && s.frame.height > 0, `${who}: decoded frame is ${s.frame.width}x${s.frame.height}`);
  }
}

// Room scenario: one setup, three reported checks.
async function roomScenario(server, report) {
  const n = 4;
  const ids = Array.from({ length: n }, (_, i) => `r${i + 1}-${RUN}`);
  const opts = peerOptions(server, { token: "room1" });
  const pages = [];
  let opened = false;
  let meshError = null;
  try {
    for (let i = 0; i < n; i++) pages.push(await newPeerPage(`room${i + 1}`));
    await Promise.all(pages.map((p, i) => openPeerOk(p, ids[i], opts)));
    opened = true;
    // i connects to every j > i: 6 connections, each carries both directions.
    const jobs = [];
    for (let i = 0; i < n; i++) {
      for (let j = i + 1; j < n; j++) {
        jobs.push(ev(pages[i], (id) => window.E2E.connect(id, 20000), ids[j]));
        jobs.push(ev(pages[j], (id) => window.E2E.waitIncoming(id, 20000), ids[i]));
      }
    }
    await Promise.all(jobs);
    for (let i = 0; i < n; i++) {
      for (let j = 0; j < n; j++) {
        if (i !== j) await ev(pages[i], ([to, v]) => window.E2E.send(to, { kind: "string", value: v }), [ids[j], `${ids[i]}→${ids[j]}`]);
      }
    }
    let arrived = 0;
    for (let j = 0; j < n; j++) {
      for (let i = 0; i < n; i++) {
        if (i === j) continue;
        const got = await ev(pages[j], (id) => window.E2E.receive(id, 1, 10000), ids[i]);
        assertEq(got, [{ kind: "string", value: `${ids[i]}→${ids[j]}` }], `message ${ids[i]}→${ids[j]}`);
        arrived++;
      }
    }
    assertEq(arrived, 12, "directed messages");
  } catch (e) {
    meshError = e;
  }
  report(NAMES.roomMesh, meshError);

  // A fifth peer: refused while the room holds four.
  let fullError = null;
  try {
    if (!opened) throw new CheckFailure(`the four room peers did not open: ${meshError.message}`);
    const fifth = await newPeerPage("room5");
    const r = await openPeer(fifth, `r5-${RUN}`, opts);
    assertEq({ ok: r.ok, type: r.type, message: r.message }, { ok: false, type: "server-error", message: "Room is full" }, "fifth peer");
  } catch (e) {
    fullError = e;
  }
  report(NAMES.roomFull, fullError);

  let leaveError = null;
  try {
    if (meshError) throw new CheckFailure(`needs the full mesh, which failed: ${meshError.message}`);
    const leaver = pages[3];
    const leaverId = ids[3];
    const t0 = Date.now();
    await leaver.close();
    const results = await Promise.all([0, 1, 2].map(async (i) => {
      const frame = await waitWsFrame(pages[i], (m) => m.type === "LEAVE" && m.src === leaverId, 5000, `${pages[i].label}: LEAVE from ${leaverId}`);
      const closedIn = await ev(pages[i], (id) => window.E2E.waitConnClose(id, 5000), leaverId);
      const open = await ev(pages[i], (id) => (window.E2E.peer.connections[id] || []).filter((c) => c.open).length, leaverId);
      assertEq(open, 0, `${pages[i].label}: open connections to ${leaverId}`);
      return { leaveMs: frame.at - t0, closedMs: Date.now() - t0, closedIn };
    }));
    log(`# ${NAMES.roomLeave}: ${results.map((r, i) => `room${i + 1} LEAVE after ${r.leaveMs} ms`).join(", ")}`);
  } catch (e) {
    leaveError = e;
  }
  report(NAMES.roomLeave, leaveError);
}

async function expectFailure(page, id, opts, expected, what) {
  const r = await openPeer(page, id, opts, 15000);
  assertEq({ ok: r.ok, type: r.type, message: r.message }, { ok: false, ...expected }, what);
}

async function checkWrongKey(server) {
  const p = await newPeerPage("P");
  await expectFailure(p, `wrongkey-${RUN}`, peerOptions(server, { key: "peerjs" }), { type: "server-error", message: "Invalid key provided" }, "peer with key peerjs");
  const state = await ev(p, () => window.E2E.waitEvent("close", 5000).then(() => ({ destroyed: window.E2E.peer.destroyed })));
  assertEq(state, { destroyed: true }, "peer after the ERROR");
}

// What peerjs 1.5.5 reports when GET {path}{key}/id fails: _abort(ServerError, new Error(...)).
// PeerError copies only enumerable own properties of an Error object, and Error#message
// is not enumerable, so the error arrives as type "server-error" with an EMPTY message.
// (The text "Could not get an ID from the server." only goes to the client's own logger.)
const NO_ID_ERROR = { type: "server-error", message: "" };
const NO_ID_LOG = "Could not get an ID from the server.";

// With debug: 1 the client logs the reason it does not put in the error event.
async function expectNoIdFailure(page, opts, what) {
  await expectFailure(page, null, { ...opts, debug: 1 }, NO_ID_ERROR, what);
  await ev(page, () => window.E2E.waitEvent("close", 5000));
  const logged = page.consoleLines.filter((l) => l.includes("PeerJS"));
  assert(logged.some((l) => l.startsWith("error:") && l.includes(NO_ID_LOG)), `${what}: client did not log "${NO_ID_LOG}"; console: ${JSON.stringify(logged)}`);
}
const LOST_CONNECTION = { type: "network", message: "Lost connection to server." };

async function checkWrongPathNoId(server) {
  const p = await newPeerPage("P");
  await expectNoIdFailure(p, peerOptions(server, { path: "/wrong/" }), "peer without id on path /wrong/");
}

async function checkWrongPathId(server) {
  const p = await newPeerPage("P");
  await expectFailure(p, `wrongpath-${RUN}`, peerOptions(server, { path: "/wrong/" }), LOST_CONNECTION, "peer with fixed id on path /wrong/");
  const state = await ev(p, () => window.E2E.waitEvent("disconnected", 5000).then(() => ({ disconnected: window.E2E.peer.disconnected, open: window.E2E.peer.open })));
  assertEq(state, { disconnected: true, open: false }, "peer state");
}

async function checkDownNoId(down) {
  const p = await newPeerPage("P");
  await expectNoIdFailure(p, peerOptions(down), "peer without id, nothing listening");
}

async function checkDownId(down) {
  const p = await newPeerPage("P");
  await expectFailure(p, `down-${RUN}`, peerOptions(down), LOST_CONNECTION, "peer with fixed id, nothing listening");
  await ev(p, () => window.E2E.waitEvent("disconnected", 5000));
}

// ------------------------------------------------ who may join (README: Who may join)

// The app's backend signs join tokens with this secret (a fresh one per run); peerjsd gets it
// from PEERJSD_AUTH_SECRET. Tokens are minted with npm jsonwebtoken exactly as the README's
// backend snippet does.
const AUTH_SECRET = randomBytes(32).toString("base64");
const AUTH_SERVER = { env: { PEERJSD_AUTH_SECRET: AUTH_SECRET } };

function mintToken(claims, expiresIn = "10m") {
  return jwt.sign(claims, AUTH_SECRET, { algorithm: "HS256", ...(expiresIn ? { expiresIn } : {}) });
}

// The same token with its claims changed after signing (the signature no longer matches).
function tamperToken(token, changes) {
  const [header, payload, signature] = token.split(".");
  const claims = { ...JSON.parse(Buffer.from(payload, "base64url").toString()), ...changes };
  return `${header}.${Buffer.from(JSON.stringify(claims)).toString("base64url")}.${signature}`;
}

const AUTH_NAMES = {
  room: "auth: four peers join room1 with tokens signed by the backend (npm jsonwebtoken); the room comes from the token and they connect",
  otherRoom: "auth: a fifth peer with a token for room2 is kept out of room1 (peer-unavailable), a room1 token edited from room2 gets \"Invalid token: bad signature\", a valid room1 token gets \"Room is full\"",
  expired: "auth: an expired token gets server-error \"Invalid token: expired\"",
  hijack: "auth: a stalled holder's id is not taken without a valid token for it (wrong id, no token, forged); a valid token takes it over",
  issued: "auth: --issued-ids-only: new Peer() opens with the id the server minted; a chosen id gets server-error \"Invalid id: not issued by this server\"",
};

// Room scenario with signed tokens: one setup, two reported checks.
async function authRoomScenario(server, report) {
  const ids = [1, 2, 3, 4].map((i) => `a${i}-${RUN}`);
  const pages = [];
  let roomError = null;
  try {
    for (let i = 0; i < ids.length; i++) pages.push(await newPeerPage(`auth${i + 1}`));
    await Promise.all(pages.map((p, i) => openPeerOk(p, ids[i], peerOptions(server, { token: mintToken({ sub: ids[i], room: "room1" }) }))));
    // The server put them in the room their token names.
    for (const id of ids) {
      const open = await server.waitLog((l) => l.message === "peer open" && l.peer === id, 3000, `server log "peer open" for ${id}`);
      assertEq(open.room, "room1", `room of ${id} in the server's "peer open" line`);
    }
    for (let j = 1; j < ids.length; j++) {
      await ev(pages[0], (id) => window.E2E.connect(id, 15000), ids[j]);
      await ev(pages[j], (id) => window.E2E.waitIncoming(id, 15000), ids[0]);
      await ev(pages[0], ([id, v]) => window.E2E.send(id, { kind: "string", value: v }), [ids[j], `hello ${ids[j]}`]);
      assertEq(await ev(pages[j], (id) => window.E2E.receive(id, 1, 10000), ids[0]), [{ kind: "string", value: `hello ${ids[j]}` }], `message to ${ids[j]}`);
    }
  } catch (e) {
    roomError = e;
  }
  report(AUTH_NAMES.room, roomError);

  let outError = null;
  try {
    if (roomError) throw new CheckFailure(`needs the room of four, which failed: ${roomError.message}`);
    const fifthId = `a5-${RUN}`;
    const other = mintToken({ sub: fifthId, room: "room2" });
    const fifth = await newPeerPage("auth5");
    await openPeerOk(fifth, fifthId, peerOptions(server, { token: other }));
    // Signaling to a room1 peer from room2 goes nowhere: the client reports peer-unavailable
    // (EXPIRE after --expire-timeout, 5 s).
    const mark = await ev(fifth, () => window.E2E.mark());
    await ev(fifth, (id) => {
      window.E2E.peer.connect(id);
      return true;
    }, ids[0]);
    const err = await ev(fifth, (m) => window.E2E.waitEvent("error", 10000, m).then((e) => ({ type: e.type, message: e.message })), mark);
    assertEq(err, { type: "peer-unavailable", message: `Could not connect to peer ${ids[0]}` }, "fifth peer connecting into room1");
    const seen = await ev(pages[0], (id) => window.E2E.events.filter((e) => e.ev === "connection" && e.peer === id).length, fifthId);
    assertEq(seen, 0, `connections ${ids[0]} saw from the fifth peer`);
    // Editing the room in its token breaks the signature.
    const forgedPage = await newPeerPage("auth5-forged");
    const forged = tamperToken(other, { sub: `a6-${RUN}`, room: "room1" });
    await expectFailure(forgedPage, `a6-${RUN}`, peerOptions(server, { token: forged }), { type: "server-error", message: "Invalid token: bad signature" }, "peer with a token edited to room1");
    // A genuine room1 token: the room is full.
    const sixth = await newPeerPage("auth6");
    await expectFailure(sixth, `a6-${RUN}`, peerOptions(server, { token: mintToken({ sub: `a6-${RUN}`, room: "room1" }) }), { type: "server-error", message: "Room is full" }, "fifth room1 peer");
  } catch (e) {
    outError = e;
  }
  report(AUTH_NAMES.otherRoom, outError);
}

async function checkAuthExpired(server) {
  const p = await newPeerPage("P");
  const id = `expired-${RUN}`;
  const token = mintToken({ sub: id, exp: Math.floor(Date.now() / 1000) - 3600 }, null);
  await expectFailure(p, id, peerOptions(server, { token }), { type: "server-error", message: "Invalid token: expired" }, "peer with an expired token");
  await ev(p, () => window.E2E.waitEvent("close", 5000));
}

// The holder's signaling socket goes silent (its Chromium's network service is stopped, as in
// the silent-holder check). Newcomers without a valid token for its id are refused in-band
// and never trigger the probe; one with a valid token takes the id over after the probe.
async function checkAuthHijack(server) {
  const id = `held-${RUN}`;
  const launched = await launchBrowser("holder");
  const frozen = trackExtraBrowser(launched.browser, launched.pid);
  try {
    assert(launched.pid, "could not find the holder browser's process");
    const holder = await newPeerPage("holder", launched.browser);
    await openPeerOk(holder, id, peerOptions(server, { token: mintToken({ sub: id }) }));
    const before = await sessionsClosed(server, "probe_failed");
    const ns = networkServicePid(launched.pid);
    assert(ns, `no network service process under the holder's browser (pid ${launched.pid})`);
    frozen.freeze(ns);
    await waitStopped(ns, 2000);

    const attempts = [
      ["a token signed for another id", mintToken({ sub: `mallory-${RUN}` }), "Invalid token: wrong id"],
      ["no token (PeerJS's random one)", undefined, "Invalid token: malformed"],
      ["a token for the id signed with another secret", jwt.sign({ sub: id }, randomBytes(32).toString("base64"), { algorithm: "HS256", expiresIn: "10m" }), "Invalid token: bad signature"],
      ["alg none", tamperToken(mintToken({ sub: id }), {}).replace(/^[^.]+/, Buffer.from('{"alg":"none","typ":"JWT"}').toString("base64url")), "Invalid token: unsupported algorithm"],
    ];
    for (const [what, token, message] of attempts) {
      const p = await newPeerPage("intruder");
      const opts = token === undefined ? peerOptions(server) : peerOptions(server, { token });
      await expectFailure(p, id, opts, { type: "server-error", message }, `intruder with ${what}`);
    }
    assertEq(await sessionsClosed(server, "probe_failed") - before, 0, "sessions closed as probe_failed after the intruders");
    const probed = server.output.some((l) => l.includes(TOOK_OVER) && l.includes(id));
    assert(!probed, `the server took ${id} over for an intruder`);

    // The owner's backend mints a fresh token (page reload): that one may take the id over.
    const heir = await newPeerPage("heir");
    const t0 = Date.now();
    await openPeerOk(heir, id, peerOptions(server, { token: mintToken({ sub: id }) }));
    log(`# ${AUTH_NAMES.hijack}: the holder of a valid token got the id after ${Date.now() - t0} ms`);
    await server.waitLog((l) => l.message === TOOK_OVER && l.peer === id, 3000, `server log "${TOOK_OVER}"`);
  } finally {
    await frozen.release();
  }
}

async function checkIssuedIds(server) {
  const p = await newPeerPage("P");
  // new Peer() takes its id from GET {path}{key}/id (check 2 watches that request).
  const r = await openPeer(p, null, peerOptions(server));
  assert(r.ok, `new Peer() did not open: ${r.type} ${JSON.stringify(r.message)}`);
  assert(/^[0-9a-f]{24}-[0-9a-f]{32}$/.test(r.id), `id ${JSON.stringify(r.id)} is not an issued id`);
  await server.waitLog((l) => l.message === "peer open" && l.peer === r.id, 3000, `server log "peer open" for ${r.id}`);
  const chosen = await newPeerPage("chosen");
  await expectFailure(chosen, `chosen-${RUN}`, peerOptions(server), { type: "server-error", message: "Invalid id: not issued by this server" }, "peer with a chosen id");
  // The issued id signals as any other: a second new Peer() connects to it.
  const q = await newPeerPage("Q");
  const qr = await openPeer(q, null, peerOptions(server));
  assert(qr.ok, `second new Peer() did not open: ${qr.type} ${JSON.stringify(qr.message)}`);
  await ev(q, (id) => window.E2E.connect(id, 15000), r.id);
  await ev(p, (id) => window.E2E.waitIncoming(id, 15000), qr.id);
  await ev(q, (id) => window.E2E.send(id, { kind: "string", value: "to an issued id" }), r.id);
  assertEq(await ev(p, (id) => window.E2E.receive(id, 1, 10000), qr.id), [{ kind: "string", value: "to an issued id" }], "message between issued ids");
}

const AUTH_GROUPS = [
  {
    server: { rooms: "token", maxRoomPeers: 4, ...AUTH_SERVER },
    skipReference: "reference has no signed tokens",
    scenario: authRoomScenario,
    names: [AUTH_NAMES.room, AUTH_NAMES.otherRoom],
    budgetMs: 90000,
  },
  {
    server: AUTH_SERVER,
    skipReference: "reference has no signed tokens",
    checks: [
      [AUTH_NAMES.expired, checkAuthExpired],
      [AUTH_NAMES.hijack, checkAuthHijack],
    ],
  },
  {
    server: { args: ["--issued-ids-only"] },
    skipReference: "reference has no issued ids",
    checks: [[AUTH_NAMES.issued, checkIssuedIds]],
  },
];

// ------------------------------------------- TURN credentials (README: TURN)

// The runner starts a coturn of its own (Debian's package: `turnserver`) on loopback, with
// the TURN REST scheme and a secret fresh per run; peerjsd gets the same secret from
// PEERJSD_TURN_SECRET and hands out credentials for it at GET {path}{key}/ice. The pages
// fetch that (a cross-origin request, so CORS is exercised as the client's /id fetch is) and
// give the answer to a stock PeerJS client as `config: {iceServers, iceTransportPolicy:
// "relay"}`: WebRTC may then only use relay candidates, i.e. coturn.
const TURN_SECRET = randomBytes(32).toString("base64");
const TURN_PORT = SERVER_KIND === "peerjsd" ? await freePort() : 0;
const TURN_SERVER = {
  env: { PEERJSD_TURN_SECRET: TURN_SECRET },
  args: ["--turn-uri", `turn:127.0.0.1:${TURN_PORT}?transport=udp`, "--turn-uri", `turn:127.0.0.1:${TURN_PORT}?transport=tcp`, "--turn-ttl", "1h"],
};
const TURN_AUTH_SERVER = { env: { ...TURN_SERVER.env, PEERJSD_AUTH_SECRET: AUTH_SECRET }, args: TURN_SERVER.args };

let coturnProcess = null; // the one coturn of the run, started by the first TURN check

// Starts coturn (once per run) and resolves when it listens: {waitLine(pred, ms, what)}.
// Its log goes to stdout (-v: a line per allocation, naming the username and the relay
// address); it is killed with the other children when the runner exits.
async function ensureCoturn() {
  if (coturnProcess) return coturnProcess;
  const dir = mkdtempSync(path.join(os.tmpdir(), "peerjsd-e2e-coturn-"));
  process.on("exit", () => rmSync(dir, { recursive: true, force: true }));
  const args = ["-c", "/dev/null", "-v", "--use-auth-secret", "--static-auth-secret", TURN_SECRET,
    "--realm", "peerjsd.test", "--no-cli", "--allow-loopback-peers",
    "--listening-ip", "127.0.0.1", "--listening-port", String(TURN_PORT), "--relay-ip", "127.0.0.1",
    "--no-tls", "--no-dtls", "--log-file", "stdout", "--simple-log",
    "--pidfile", path.join(dir, "pid"), "--userdb", path.join(dir, "turndb")];
  const child = spawn("turnserver", args, { stdio: ["ignore", "pipe", "pipe"] });
  const spawned = new Promise((resolve, reject) => {
    child.on("spawn", resolve);
    child.on("error", (e) => reject(e.code === "ENOENT"
      ? new CheckFailure("coturn is not installed (no turnserver on PATH): run e2e/setup.sh, or apt-get install -y coturn")
      : e));
  });
  await spawned;
  children.add(child);
  child.on("exit", () => children.delete(child));
  // coturn runs until the checks are done: it must not keep the runner alive, and once
  // nothing else is left the runner stops it and waits for it (no zombie is left behind).
  child.unref();
  child.stdout.unref();
  child.stderr.unref();
  process.on("beforeExit", () => {
    if (child.exitCode !== null || child.signalCode !== null || child.killed) return;
    child.ref();
    child.kill("SIGTERM");
  });
  const lines = lineLog();
  let exited = null;
  child.on("exit", (code, sig) => (exited = { code, sig }));
  const onData = (chunk) => {
    for (const line of chunk.toString().split("\n")) {
      if (!line) continue;
      if (VERBOSE) log(`  coturn: ${line}`);
      lines.add(line);
    }
  };
  child.stdout.on("data", onData);
  child.stderr.on("data", onData);
  const proc = {
    // Wait for a coturn log line matching pred (also looks at the lines already logged).
    waitLine(pred, ms, what) {
      const hit = lines.seen.find(pred);
      if (!hit && exited) return Promise.reject(new CheckFailure(`coturn exited (${JSON.stringify(exited)}) before ${what}; last lines: ${oneLine(lines.seen.slice(-5).join(" | "))}`));
      return lines.wait(pred, ms, what);
    },
  };
  await proc.waitLine((l) => l.includes(`UDP listener opened on: 127.0.0.1:${TURN_PORT}`), 10000, "coturn listening");
  log(`# coturn (pid ${child.pid}) listening on 127.0.0.1:${TURN_PORT}`);
  coturnProcess = proc;
  return proc;
}

const TURN_NAMES = {
  open: "turn: two peers that fetched {path}{key}/ice (no auth) and set iceTransportPolicy \"relay\" open a data channel through coturn (relay candidates only)",
  auth: "turn: with --auth-secret, /ice needs a join token (401 without); two peers with credentials for their ids talk through coturn (relay candidates only)",
};

// In the page: GET the /ice URL (with `headers`), then open a stock Peer whose RTCPeerConnection
// config is the answer's iceServers with iceTransportPolicy "relay". Returns {ice, open}.
function openWithIce(page, id, iceUrl, headers, opts) {
  return page.evaluate(async ([id, iceUrl, headers, opts]) => {
    const res = await fetch(iceUrl, { headers, cache: "no-store" });
    if (res.status !== 200) return { status: res.status, text: await res.text() };
    const ice = await res.json();
    const open = await window.E2E.open(id, { ...opts, config: { iceServers: ice.iceServers, iceTransportPolicy: "relay" } }, 10000);
    return { status: 200, ice, open };
  }, [id, iceUrl, headers, opts]);
}

// The local candidates a connection gathered, and the selected pair's local candidate,
// from RTCPeerConnection.getStats().
function relayStats(page, remote) {
  return ev(page, async (remote) => {
    const conn = window.E2E.conns.get(remote);
    const stats = await conn.peerConnection.getStats();
    const local = [];
    stats.forEach((r) => {
      if (r.type === "local-candidate") local.push({ type: r.candidateType, address: r.address, port: r.port, relayProtocol: r.relayProtocol, url: r.url });
    });
    return { local, pair: await window.E2E.selectedPair(remote) };
  }, remote);
}

// Two pages get credentials from /ice (`access` gives each its request headers and query,
// and its Peer options: with auth, the same join token is the PeerJS token),
// connect through coturn only, and a message goes each way. Asserts: every local candidate is
// a relay candidate, the selected pair is relay on both ends, its local relay address is one
// coturn logged allocating for that page's username, and coturn allocated for both names.
async function turnPair(server, label, access) {
  const turn = await ensureCoturn();
  const ids = [`${label}a-${RUN}`, `${label}b-${RUN}`];
  const pages = [await newPeerPage(`${label}A`), await newPeerPage(`${label}B`)];
  const base = `http://127.0.0.1:${server.port}${SERVER_PATH}/${server.key}/ice`;
  const got = [];
  for (let i = 0; i < 2; i++) {
    const { query, headers, peer } = access(ids[i]);
    const r = await openWithIce(pages[i], ids[i], base + query, headers, peerOptions(server, peer));
    assertEq(r.status, 200, `${pages[i].label}: GET /ice status (${r.text})`);
    assert(r.open.ok, `${pages[i].label}: peer did not open: ${r.open.type} ${JSON.stringify(r.open.message)}`);
    const turnEntry = r.ice.iceServers.find((s) => s.username);
    assert(turnEntry && turnEntry.urls.includes(`turn:127.0.0.1:${TURN_PORT}?transport=udp`), `${pages[i].label}: /ice answer ${JSON.stringify(r.ice)}`);
    assertEq(r.ice.ttl, 3600, `${pages[i].label}: ttl`);
    got.push(turnEntry);
  }
  await ev(pages[0], (id) => window.E2E.connect(id, 20000), ids[1]);
  await ev(pages[1], (id) => window.E2E.waitIncoming(id, 20000), ids[0]);
  await ev(pages[0], (id) => window.E2E.send(id, { kind: "string", value: "through the relay" }), ids[1]);
  assertEq(await ev(pages[1], (id) => window.E2E.receive(id, 1, 10000), ids[0]), [{ kind: "string", value: "through the relay" }], "message A→B");
  await ev(pages[1], (id) => window.E2E.send(id, { kind: "string", value: "and back" }), ids[0]);
  assertEq(await ev(pages[0], (id) => window.E2E.receive(id, 1, 10000), ids[1]), [{ kind: "string", value: "and back" }], "message B→A");

  for (let i = 0; i < 2; i++) {
    const { local, pair } = await relayStats(pages[i], ids[1 - i]);
    const where = `${pages[i].label}→${ids[1 - i]}`;
    assert(local.length > 0, `${where}: no local candidates in getStats()`);
    assert(local.every((c) => c.type === "relay"), `${where}: local candidates ${JSON.stringify(local)}`);
    assert(pair, `${where}: no selected candidate pair`);
    assertEq([pair.local.type, pair.remote.type], ["relay", "relay"], `${where}: selected pair's candidate types`);
    // coturn logged this relay address right after allocating it, then the allocation for
    // this page's username.
    const relay = `Local relay addr: 127.0.0.1:${pair.local.port}`;
    await turn.waitLine((l) => l.trimEnd().endsWith(relay), 5000, `coturn log "${relay}"`);
    await turn.waitLine((l) => l.includes(`user <${got[i].username}>: incoming packet ALLOCATE processed, success`), 5000, `coturn allocation for ${got[i].username}`);
    log(`# ${label}: ${where} ICE pair ${pair.local.protocol} ${pair.local.address}:${pair.local.port} (${pair.local.type}) <-> ${pair.remote.address}:${pair.remote.port} (${pair.remote.type})`);
  }
  return got;
}

async function checkTurnOpen(server) {
  const got = await turnPair(server, "turn", () => ({ query: "", headers: {} }));
  // Without auth the name in the username is random per request.
  const whos = got.map((t) => t.username.split(":")[1]);
  assert(whos.every((w) => /^[0-9a-f]{32}$/.test(w)) && whos[0] !== whos[1], `usernames ${JSON.stringify(got.map((t) => t.username))}`);
  const m = (await httpGet(`http://127.0.0.1:${server.port}/metrics`, 2000, { accept: "text/plain" })).body.match(/^peerjs_ice_requests_total\{outcome="issued"\} (\d+)$/m);
  assert(m && Number(m[1]) >= 2, `peerjs_ice_requests_total{outcome="issued"}: ${m && m[1]}`);
}

async function checkTurnAuth(server) {
  // Without a token the page gets the 401 and its reason (the CORS headers let it read them).
  const p = await newPeerPage("no-token");
  const url = `http://127.0.0.1:${server.port}${SERVER_PATH}/${server.key}/ice`;
  const refused = await ev(p, async (url) => {
    const res = await fetch(url, { cache: "no-store" });
    return { status: res.status, text: await res.text() };
  }, url);
  assertEq(refused, { status: 401, text: "Missing token: send the join token as ?token= or Authorization: Bearer" }, "GET /ice without a token");
  // The backend mints one join token per page: the page sends it to /ice (one as
  // Authorization: Bearer, which takes a CORS preflight, the other as ?token=) and connects
  // with it as its PeerJS token.
  let n = 0;
  const got = await turnPair(server, "turnauth", (id) => {
    const token = mintToken({ sub: id });
    const peer = { token };
    return n++ === 0 ? { query: "", headers: { authorization: `Bearer ${token}` }, peer } : { query: `?token=${encodeURIComponent(token)}`, headers: {}, peer };
  });
  // The username names the peer the token was for.
  assertEq(got.map((t) => t.username.split(":").slice(1).join(":")), [`turnautha-${RUN}`, `turnauthb-${RUN}`], "who in the usernames");
}

const TURN_GROUPS = [
  {
    server: TURN_SERVER,
    skipReference: "reference has no TURN credentials",
    checks: [[TURN_NAMES.open, checkTurnOpen]],
  },
  {
    server: TURN_AUTH_SERVER,
    skipReference: "reference has no TURN credentials",
    checks: [[TURN_NAMES.auth, checkTurnAuth]],
  },
];

// ------------------------------------------------------------------- cluster

const CLUSTER_NAMES = {
  global: "cluster: two peers on different peerjsd nodes (one NATS server) open a data channel, global mode",
  rooms: "cluster: two peers of one room on different peerjsd nodes open a data channel, room mode",
};

const NATS_BIN = ["/usr/sbin/nats-server", "/usr/bin/nats-server"].find((p) => existsSync(p));

// A nats-server on a free port, ready when it accepts a TCP connection.
async function startNats() {
  if (!NATS_BIN) throw new Error("nats-server not found: apt-get install nats-server (e2e/setup.sh does)");
  const port = await freePort();
  const child = spawn(NATS_BIN, ["-a", "127.0.0.1", "-p", String(port)], { stdio: ["ignore", "ignore", "pipe"] });
  children.add(child);
  child.on("exit", () => children.delete(child));
  const deadline = Date.now() + 10000;
  for (;;) {
    const up = await new Promise((resolve) => {
      const sock = net.connect(port, "127.0.0.1", () => { sock.destroy(); resolve(true); });
      sock.on("error", () => resolve(false));
    });
    if (up) break;
    if (Date.now() > deadline) throw new Error(`nats-server did not listen on ${port}`);
    await new Promise((r) => setTimeout(r, 50)); // readiness poll interval
  }
  return { url: `nats://127.0.0.1:${port}`, stop: () => child.kill("SIGKILL") };
}

// Two peerjsd nodes on `nats`, each seeing the other (their /health says "nodes":1).
async function startClusterNodes(nats, extra) {
  const nodes = [];
  for (const name of ["n1", "n2"]) {
    nodes.push(await startSignalingServer({
      ...extra,
      args: ["--cluster", nats.url, "--cluster-name", `e2e-${RUN}`, "--node-name", `${name}-${RUN}`, ...(extra.args || [])],
    }));
  }
  const deadline = Date.now() + 15000;
  for (const node of nodes) {
    for (;;) {
      const r = await httpGet(`http://127.0.0.1:${node.port}/health`, 1000);
      const health = JSON.parse(r.body);
      if (health.cluster === "ok" && health.nodes === 1) break;
      if (Date.now() > deadline) throw new Error(`cluster did not form: ${r.body}`);
      await new Promise((res) => setTimeout(res, 50)); // readiness poll interval
    }
  }
  return nodes;
}

// Peers A (on node 1) and B (on node 2) open; A connects to B; both exchange every payload.
async function crossNodeChannel(nodes, extra, label) {
  const a = await newPeerPage(`${label}-A`);
  const b = await newPeerPage(`${label}-B`);
  const aId = await openPeerOk(a, `${label}-alice-${RUN}`, peerOptions(nodes[0], extra));
  const bId = await openPeerOk(b, `${label}-bob-${RUN}`, peerOptions(nodes[1], extra));
  await ev(a, (id) => window.E2E.connect(id, 15000), bId);
  await ev(b, (id) => window.E2E.waitIncoming(id, 15000), aId);
  await exchange(a, aId, b, bId);
  await exchange(b, bId, a, aId);
}

async function clusterScenario(_server, report) {
  let nats = null;
  try {
    nats = await startNats();
  } catch (e) {
    for (const n of Object.values(CLUSTER_NAMES)) report(n, e);
    return;
  }
  try {
    for (const [name, mode] of [[CLUSTER_NAMES.global, {}], [CLUSTER_NAMES.rooms, { rooms: "token", maxRoomPeers: 4 }]]) {
      let nodes = [];
      let err = null;
      try {
        nodes = await startClusterNodes(nats, mode);
        const extra = mode.rooms ? { token: `room-${RUN}` } : {};
        await crossNodeChannel(nodes, extra, mode.rooms ? "rooms" : "global");
      } catch (e) {
        err = e;
        for (const node of nodes) dumpServer(node);
      } finally {
        await closeAllContexts();
        for (const node of nodes) await node.stop();
      }
      report(name, err);
    }
  } finally {
    nats.stop();
  }
}

// Groups of checks sharing one server configuration (null = no server).
const GROUPS = [
  {
    server: {},
    checks: [
      [NAMES.data, checkData],
      [NAMES.serverId, checkServerId],
      [NAMES.idTaken, checkIdTaken],
      [NAMES.idFreed, checkIdFreed],
      [NAMES.silentHolder, checkSilentHolder],
      [NAMES.reconnect, checkReconnect],
      [NAMES.media, checkMedia],
      [NAMES.wrongPathNoId, checkWrongPathNoId],
      [NAMES.wrongPathId, checkWrongPathId],
    ],
  },
  {
    server: { rooms: "token", maxRoomPeers: 4 },
    skipReference: "reference has no rooms",
    scenario: roomScenario,
    names: [NAMES.roomMesh, NAMES.roomFull, NAMES.roomLeave],
    budgetMs: 90000,
  },
  { server: { key: "secret" }, checks: [[NAMES.wrongKey, checkWrongKey]] },
  {
    server: null,
    checks: [
      [NAMES.downNoId, checkDownNoId],
      [NAMES.downId, checkDownId],
    ],
  },
  ...AUTH_GROUPS,
  ...TURN_GROUPS,
  {
    server: null,
    skipReference: "reference has no cluster",
    scenario: clusterScenario,
    names: Object.values(CLUSTER_NAMES),
    budgetMs: 90000,
  },
];

// ------------------------------------------------------------------- runner

const results = { passed: 0, failed: 0, skipped: 0 };

function report(name, err, ms) {
  if (err) {
    results.failed++;
    process.stdout.write(`not ok - ${name}: ${oneLine(err.message || err)}\n`);
  } else {
    results.passed++;
    process.stdout.write(`ok - ${name}\n`);
  }
  if (ms !== undefined) log(`# ${ms} ms  ${name}`);
}

function skip(name, why) {
  results.skipped++;
  process.stdout.write(`ok - ${name} # SKIP ${why}\n`);
}

function dumpServer(server) {
  if (!server) return;
  log(`# server: ${server.desc}`);
  for (const line of server.output.slice(-40)) log(`#   ${line}`);
}

async function main() {
  if (SERVER_KIND !== "peerjsd" && SERVER_KIND !== "reference") {
    process.stdout.write(`not ok - setup: E2E_SERVER must be peerjsd or reference, not ${SERVER_KIND}\n`);
    process.stdout.write("e2e: 0 passed, 1 failed, 0 skipped\n");
    process.exit(1);
  }
  if (SERVER_KIND === "peerjsd" && !existsSync(PEERJSD_BIN)) {
    process.stdout.write(`not ok - setup: no peerjsd binary at ${PEERJSD_BIN}: build it with "cargo build --release" in the repository root, or set PEERJSD_BIN\n`);
    process.stdout.write("e2e: 0 passed, 1 failed, 0 skipped\n");
    process.exit(1);
  }
  if (SERVER_KIND === "reference" && !existsSync(REFERENCE_CLI)) {
    process.stdout.write(`not ok - setup: no reference server at ${REFERENCE_CLI}: run "npm ci" in e2e/\n`);
    process.stdout.write("e2e: 0 passed, 1 failed, 0 skipped\n");
    process.exit(1);
  }
  if (!existsSync(CHROMIUM_BIN)) {
    process.stdout.write(`not ok - setup: no Chromium at ${CHROMIUM_BIN}: run e2e/setup.sh (apt-get install -y chromium)\n`);
    process.stdout.write("e2e: 0 passed, 1 failed, 0 skipped\n");
    process.exit(1);
  }
  const started = Date.now();
  const stat = await startStaticServer();
  pageUrl = stat.url;
  ({ browser } = await launchBrowser("main"));
  log(`# server ${SERVER_KIND}${SERVER_KIND === "peerjsd" ? ` (${PEERJSD_BIN})` : ""}, Chromium ${browser.version()}, pages ${pageUrl}, run ${RUN}`);

  try {
    for (const group of GROUPS) {
      const names = group.names || group.checks.map(([n]) => n);
      const selected = names.filter((n) => n.includes(ONLY));
      if (selected.length === 0) continue;
      if (group.skipReference && SERVER_KIND === "reference") {
        for (const n of names) skip(n, group.skipReference);
        continue;
      }
      let server = null;
      let down = null;
      if (group.server) {
        try {
          server = await startSignalingServer(group.server);
        } catch (e) {
          for (const n of selected) report(n, e);
          continue;
        }
      } else {
        down = { port: await freePort(), key: "peerjs" }; // nothing listens here
      }
      let groupFailed = false;
      try {
        if (group.scenario) {
          const t0 = Date.now();
          const done = new Set();
          await withTimeout(group.scenario(server, (n, err) => {
            groupFailed ||= !!err;
            done.add(n);
            report(n, err, Date.now() - t0);
          }), group.budgetMs || 60000, "scenario").catch((e) => {
            groupFailed = true;
            for (const n of names) if (!done.has(n)) report(n, e);
          });
        } else {
          for (const [name, fn] of group.checks) {
            if (!name.includes(ONLY)) continue;
            const t0 = Date.now();
            let err = null;
            try {
              await withTimeout(fn(server || down), 60000, "check");
            } catch (e) {
              err = e;
            }
            await releaseExtraBrowsers();
            if (err instanceof CheckSkip) {
              skip(name, err.message);
              log(`# ${Date.now() - t0} ms  ${name}`);
            } else {
              groupFailed ||= !!err;
              report(name, err, Date.now() - t0);
            }
            await closeAllContexts();
          }
        }
      } finally {
        await releaseExtraBrowsers();
        await closeAllContexts();
        if (groupFailed) dumpServer(server);
        if (server) await server.stop();
      }
    }
  } finally {
    await releaseExtraBrowsers();
    await browser.close().catch(() => {});
    stat.server.close();
  }
  log(`# total ${((Date.now() - started) / 1000).toFixed(1)} s`);
  process.stdout.write(`e2e: ${results.passed} passed, ${results.failed} failed, ${results.skipped} skipped\n`);
  process.exitCode = results.failed ? 1 : 0;
}

main().catch((e) => {
  process.stdout.write(`not ok - setup: ${oneLine(e.stack || e)}\n`);
  process.stdout.write(`e2e: ${results.passed} passed, ${results.failed + 1} failed, ${results.skipped} skipped\n`);
  process.exit(1);
});
