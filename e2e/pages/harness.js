// Page-side helpers for e2e/run.mjs. Loaded after the real peerjs 1.5.5 bundle
// (window.peerjs). Every wait here is event-driven with a timeout; nothing
// sleeps for a fixed time.
"use strict";
(function () {
  const E2E = {
    peer: null,
    events: [], // everything the Peer and its connections emitted, in order
    conns: new Map(), // remote id -> newest DataConnection (either direction)
    calls: [],
    inbox: new Map(), // remote id -> array of received data (described)
    waiters: [],
  };

  function now() {
    return Math.round(performance.now());
  }

  function record(ev) {
    ev.t = now();
    E2E.events.push(ev);
    for (const w of [...E2E.waiters]) {
      try {
        if (w.pred(ev)) {
          E2E.waiters.splice(E2E.waiters.indexOf(w), 1);
          clearTimeout(w.timer);
          w.resolve(ev);
        }
      } catch (e) {
        /* predicate errors are ignored */
      }
    }
  }

  // Wait for a recorded event matching pred (also looks at past events from
  // index `since`). Resolves with the event or rejects on timeout.
  function waitEvent(pred, ms, what, since = 0) {
    for (let i = since; i < E2E.events.length; i++) {
      if (pred(E2E.events[i])) return Promise.resolve(E2E.events[i]);
    }
    return new Promise((resolve, reject) => {
      const w = { pred, resolve };
      w.timer = setTimeout(() => {
        E2E.waiters.splice(E2E.waiters.indexOf(w), 1);
        reject(new Error(`timeout after ${ms} ms waiting for ${what}; events: ${JSON.stringify(E2E.events.slice(-8))}`));
      }, ms);
      E2E.waiters.push(w);
    });
  }

  function hex(u8) {
    return Array.from(u8, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  // Describe a received value in a JSON-safe way so Node can compare it.
  function describe(v) {
    if (typeof v === "string") return { kind: "string", value: v };
    if (v instanceof ArrayBuffer) return { kind: "ArrayBuffer", hex: hex(new Uint8Array(v)) };
    if (ArrayBuffer.isView(v)) {
      return { kind: v.constructor.name, hex: hex(new Uint8Array(v.buffer, v.byteOffset, v.byteLength)) };
    }
    if (v instanceof Blob) return { kind: "Blob", size: v.size };
    return { kind: typeof v, value: v };
  }

  // Build a sendable value from a JSON-safe description made in Node.
  function build(d) {
    if (d.kind === "ArrayBuffer") return Uint8Array.from(d.bytes).buffer;
    if (d.kind === "Uint8Array") return Uint8Array.from(d.bytes);
    return d.value;
  }

  function watchConn(conn, dir) {
    const remote = conn.peer;
    conn.on("open", () => {
      E2E.conns.set(remote, conn);
      record({ ev: "conn-open", peer: remote, dir, cid: conn.connectionId });
    });
    conn.on("data", (data) => {
      if (!E2E.inbox.has(remote)) E2E.inbox.set(remote, []);
      const d = describe(data);
      E2E.inbox.get(remote).push(d);
      record({ ev: "data", peer: remote, cid: conn.connectionId, data: d });
    });
    conn.on("close", () => record({ ev: "conn-close", peer: remote, dir, cid: conn.connectionId }));
    conn.on("error", (e) => record({ ev: "conn-error", peer: remote, type: e.type, message: String(e.message) }));
  }

  // Create the page's Peer. Resolves {ok:true,id} on "open" or
  // {ok:false,type,message} on the first "error"; rejects on timeout.
  E2E.open = async function (id, options, ms = 10000) {
    const since = E2E.events.length;
    const peer = id ? new peerjs.Peer(id, options) : new peerjs.Peer(options);
    E2E.peer = peer;
    peer.on("open", (pid) => record({ ev: "open", id: pid }));
    peer.on("error", (e) => record({ ev: "error", type: e.type, message: String(e.message) }));
    peer.on("disconnected", (pid) => record({ ev: "disconnected", id: pid }));
    peer.on("close", () => record({ ev: "close" }));
    peer.on("connection", (conn) => {
      record({ ev: "connection", peer: conn.peer, cid: conn.connectionId });
      watchConn(conn, "in");
    });
    peer.on("call", (call) => {
      record({ ev: "call", peer: call.peer });
      E2E.calls.push(call);
    });
    const ev = await waitEvent((e) => e.ev === "open" || e.ev === "error", ms, "open or error", since);
    return ev.ev === "open" ? { ok: true, id: ev.id } : { ok: false, type: ev.type, message: ev.message };
  };

  // After an error, wait until the client has torn down (close or disconnected).
  E2E.waitEvent = function (name, ms = 10000, since = 0) {
    return waitEvent((e) => e.ev === name, ms, name, since);
  };

  E2E.mark = () => E2E.events.length;

  E2E.connect = async function (remote, ms = 15000) {
    const since = E2E.events.length;
    const conn = E2E.peer.connect(remote, { reliable: true });
    watchConn(conn, "out");
    const ev = await waitEvent(
      (e) => (e.ev === "conn-open" || e.ev === "conn-error" || e.ev === "error") && (e.cid === conn.connectionId || e.ev === "error"),
      ms,
      `data connection to ${remote} to open`,
      since,
    );
    if (ev.ev !== "conn-open") throw new Error(`connect to ${remote} failed: ${JSON.stringify(ev)}`);
    return conn.connectionId;
  };

  // Wait until an incoming connection from `remote` is open.
  E2E.waitIncoming = async function (remote, ms = 15000, since = 0) {
    await waitEvent((e) => e.ev === "conn-open" && e.peer === remote && e.dir === "in", ms, `incoming connection from ${remote}`, since);
    return true;
  };

  E2E.send = function (remote, descr) {
    const conn = E2E.conns.get(remote);
    if (!conn || !conn.open) throw new Error(`no open connection to ${remote}`);
    conn.send(build(descr));
    return true;
  };

  // Wait until n messages from `remote` are in the inbox; returns them all.
  E2E.receive = async function (remote, n, ms = 10000) {
    const have = () => (E2E.inbox.get(remote) || []).length >= n;
    if (!have()) {
      await waitEvent(() => have(), ms, `${n} messages from ${remote} (have ${(E2E.inbox.get(remote) || []).length})`);
    }
    return E2E.inbox.get(remote).slice(0, n);
  };

  E2E.clearInbox = function (remote) {
    E2E.inbox.delete(remote);
  };

  E2E.waitConnClose = async function (remote, ms = 5000) {
    const t0 = now();
    await waitEvent((e) => e.ev === "conn-close" && e.peer === remote, ms, `connection from ${remote} to close`);
    return now() - t0;
  };

  E2E.disconnect = async function (ms = 5000) {
    const since = E2E.events.length;
    E2E.peer.disconnect();
    await waitEvent((e) => e.ev === "disconnected", ms, "disconnected", since);
    return { disconnected: E2E.peer.disconnected, open: E2E.peer.open };
  };

  E2E.reconnect = async function (ms = 10000) {
    const since = E2E.events.length;
    E2E.peer.reconnect();
    const ev = await waitEvent((e) => e.ev === "open" || e.ev === "error", ms, "open after reconnect", since);
    return ev.ev === "open" ? { ok: true, id: ev.id } : { ok: false, type: ev.type, message: ev.message };
  };

  // The ICE candidate pair a connection to `remote` uses: [{local}, {remote}].
  E2E.selectedPair = async function (remote) {
    const conn = E2E.conns.get(remote);
    const stats = await conn.peerConnection.getStats();
    let pair = null;
    stats.forEach((r) => {
      if (r.type === "transport" && r.selectedCandidatePairId) pair = stats.get(r.selectedCandidatePairId);
    });
    if (!pair) {
      stats.forEach((r) => {
        if (r.type === "candidate-pair" && r.state === "succeeded" && r.nominated) pair = r;
      });
    }
    if (!pair) return null;
    const c = (id) => {
      const x = stats.get(id);
      return x && { address: x.address, port: x.port, protocol: x.protocol, type: x.candidateType };
    };
    return { local: c(pair.localCandidateId), remote: c(pair.remoteCandidateId) };
  };

  // ---- media ----
  E2E.localStream = null;
  E2E.getCamera = async function () {
    E2E.localStream = await navigator.mediaDevices.getUserMedia({ video: { width: 320, height: 240 }, audio: true });
    return E2E.localStream.getTracks().map((t) => t.kind);
  };

  function describeStream(s) {
    return s.getTracks().map((t) => ({ kind: t.kind, readyState: t.readyState }));
  }

  // Wait until a <video> playing `stream` has decoded at least one frame.
  function videoFrames(stream, ms) {
    return new Promise((resolve, reject) => {
      const v = document.createElement("video");
      v.muted = true;
      v.autoplay = true;
      v.playsInline = true;
      v.srcObject = stream;
      document.body.appendChild(v);
      const timer = setTimeout(() => reject(new Error(`no video frame decoded within ${ms} ms`)), ms);
      v.requestVideoFrameCallback(() => {
        clearTimeout(timer);
        resolve({ width: v.videoWidth, height: v.videoHeight });
      });
      v.play().catch(() => {});
    });
  }

  E2E.call = async function (remote, ms = 15000) {
    const call = E2E.peer.call(remote, E2E.localStream);
    const stream = await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no remote stream from ${remote} within ${ms} ms`)), ms);
      call.on("stream", (s) => {
        clearTimeout(timer);
        resolve(s);
      });
      call.on("error", (e) => reject(new Error(`call error ${e.type}: ${e.message}`)));
    });
    return { tracks: describeStream(stream), frame: await videoFrames(stream, ms) };
  };

  E2E.answer = async function (ms = 15000) {
    await waitEvent((e) => e.ev === "call", ms, "incoming call");
    const call = E2E.calls[E2E.calls.length - 1];
    const stream = await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no caller stream within ${ms} ms`)), ms);
      call.on("stream", (s) => {
        clearTimeout(timer);
        resolve(s);
      });
      call.on("error", (e) => reject(new Error(`call error ${e.type}: ${e.message}`)));
      call.answer(E2E.localStream || undefined);
    });
    return { tracks: describeStream(stream), frame: await videoFrames(stream, ms) };
  };

  window.E2E = E2E;
})();
