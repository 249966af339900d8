// The browser client of `mirage serve`: photo + consent -> camera -> swapped video back.
// The photo and the token only ever go to this page's own server (same origin, Bearer header).
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const state = { pc: null, dc: null, session: null, shown: 0, rtt: null, server: null, error: null,
                  connected: false, closedReason: null, voice: null, voiceError: null };
  window.mirage = state;  // read by the tests (and handy in the console)

  const fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
  if (fromHash) { $("token").value = fromHash; history.replaceState(null, "", location.pathname); }

  function say(text, error) {
    $("status").textContent = text;
    $("status").className = error ? "error" : "";
    if (error) state.error = text;
  }
  function ready() { $("start").disabled = !($("consent").checked && $("photo").files.length && $("token").value); }
  ["consent", "photo", "token"].forEach((id) => $(id).addEventListener("input", ready));
  $("consent").addEventListener("change", ready);

  function showVoice(v) {
    state.voice = v;
    if (!v) { $("voiceState").textContent = "–"; return; }
    const lat = v.latency_ms == null ? "" : `, ${v.latency_ms.toFixed(0)} ms`;
    $("voiceState").textContent = v.converting ? `converted (${v.converter}${lat})`
      : `as it came${v.passthrough_reason ? ` (${v.passthrough_reason})` : ""}${lat}`;
  }
  function sendOption(name, value) {
    const dc = state.dc;
    if (dc && dc.readyState === "open") dc.send(JSON.stringify({ type: "option", name, value }));
  }
  $("voiceOn").addEventListener("change", () => sendOption("enable_voice", $("voiceOn").checked));
  $("pitch").addEventListener("change", () => sendOption("voice_pitch", Number($("pitch").value)));
  $("listen").addEventListener("change", () => { $("remoteAudio").muted = !$("listen").checked; });

  function readPhoto(file) {
    return new Promise((resolve, reject) => {
      const r = new FileReader();
      r.onload = () => resolve(r.result);
      r.onerror = () => reject(new Error("cannot read the photo"));
      r.readAsDataURL(file);
    });
  }

  function gathered(pc) {
    if (pc.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const check = () => { if (pc.iceGatheringState === "complete") { pc.removeEventListener("icegatheringstatechange", check); resolve(); } };
      pc.addEventListener("icegatheringstatechange", check);
    });
  }

  function countFrames(video) {
    if (!video.requestVideoFrameCallback) return;
    const times = [];
    const tick = (now) => {
      state.shown += 1;
      times.push(now); while (times.length && now - times[0] > 2000) times.shift();
      const fps = times.length > 1 ? (times.length - 1) * 1000 / (times[times.length - 1] - times[0]) : 0;
      $("shown").textContent = `${state.shown} / ${fps.toFixed(1)} fps`;
      video.requestVideoFrameCallback(tick);
    };
    video.requestVideoFrameCallback(tick);
  }

  async function start(ev) {
    ev.preventDefault();
    if (!$("consent").checked) { say("Confirm consent first: no face is used without it.", true); return; }
    $("start").disabled = true;
    try {
      say("Starting the camera…");
      let stream;
      try { stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: true }); }
      catch (e) { stream = await navigator.mediaDevices.getUserMedia({ video: true }); }
      $("local").srcObject = stream;
      const photo = await readPhoto($("photo").files[0]);
      const pc = new RTCPeerConnection();
      state.pc = pc;
      stream.getTracks().forEach((t) => pc.addTrack(t, stream));
      const dc = pc.createDataChannel("control");
      state.dc = dc;
      dc.onmessage = (m) => {
        const msg = JSON.parse(m.data);
        if (msg.type === "pong") {
          state.rtt = performance.now() - msg.t; state.server = msg.server;
          $("rtt").textContent = `${state.rtt.toFixed(0)} ms`;
          const s = msg.server;
          $("proc").textContent = s.total_p50_ms == null ? "–" : `${s.total_p50_ms.toFixed(0)} / ${s.total_p95_ms.toFixed(0)} ms`;
          $("swapped").textContent = `${s.swapped} (${s.fps_out} fps out)`;
          if (s.voice) showVoice(s.voice);
        } else if (msg.type === "voice") {
          showVoice(msg);
        } else if (msg.type === "option" && msg.voice) {
          state.voiceError = null; showVoice(msg.voice);
        } else if (msg.type === "error") {
          state.voiceError = msg.error; say(`The server refused: ${msg.error}`, true);
        } else if (msg.type === "closed") {
          state.closedReason = msg.reason; say(`The server closed the session: ${msg.reason}`, true);
        }
      };
      const hasMic = stream.getAudioTracks().length > 0;
      dc.onopen = () => {
        $("voiceOn").disabled = $("pitch").disabled = !hasMic;
        if (hasMic) sendOption("voice_pitch", Number($("pitch").value));
        state.ping = setInterval(() => { if (dc.readyState === "open") dc.send(JSON.stringify({ type: "ping", t: performance.now() })); }, 1000);
      };
      pc.ontrack = (e) => {
        if (e.track.kind === "audio") { $("remoteAudio").srcObject = new MediaStream([e.track]); return; }
        if (e.track.kind !== "video") { return; }
        $("remote").srcObject = new MediaStream([e.track]);
        countFrames($("remote"));
      };
      pc.onconnectionstatechange = () => {
        state.connected = pc.connectionState === "connected";
        if (state.connected) say("Connected: the video below comes back from the server.");
        if (pc.connectionState === "failed") say("The connection failed.", true);
      };
      await pc.setLocalDescription(await pc.createOffer());
      await gathered(pc);
      say("Connecting to the server…");
      const r = await fetch("/offer", {
        method: "POST",
        headers: { "Content-Type": "application/json", "Authorization": `Bearer ${$("token").value.trim()}` },
        body: JSON.stringify({ sdp: pc.localDescription.sdp, type: pc.localDescription.type, photo, consent: true,
                               name: "browser" }),
      });
      const ans = await r.json();
      if (!r.ok) throw new Error(`${r.status}: ${ans.error || ans.reason || "refused"}`);
      state.session = ans.session;
      await pc.setRemoteDescription({ sdp: ans.sdp, type: ans.type });
      $("stop").disabled = false;
    } catch (e) {
      say(`Could not start: ${e.message}`, true);
      $("start").disabled = false;
    }
  }

  function stop() {
    if (state.ping) clearInterval(state.ping);
    if (state.pc) state.pc.close();
    const s = $("local").srcObject; if (s) s.getTracks().forEach((t) => t.stop());
    state.pc = null; $("stop").disabled = true; $("voiceOn").disabled = $("pitch").disabled = true;
    ready(); say("Stopped.");
  }

  // for the tests: the remote video's current picture as a PNG data URL
  state.grab = function () {
    const v = $("remote");
    if (!v.videoWidth) return null;
    const c = document.createElement("canvas");
    c.width = v.videoWidth; c.height = v.videoHeight;
    c.getContext("2d").drawImage(v, 0, 0);
    return c.toDataURL("image/png");
  };

  $("setup").addEventListener("submit", start);
  $("stop").addEventListener("click", stop);
  ready();
})();
