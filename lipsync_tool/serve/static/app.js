// The page at `/` of `lipsync-tool serve`: submit a job, follow it, play the result.
// Plain JavaScript, no framework; the API it speaks is docs/service.md.
//
// HLS playback: hls.js 1.7.4 (Apache-2.0, https://github.com/video-dev/hls.js), vendored as
// /static/vendor/hls.min.js with its LICENSE next to it; it is loaded only when a stream is played.
(() => {
  'use strict';

  const HLS_JS_URL = '/static/vendor/hls.min.js';
  const POLL_MS = 500;
  const ENDED = new Set(['done', 'failed', 'cancelled']);
  const TOKEN_KEY = 'lipsync-tool.token';

  const $ = (id) => document.getElementById(id);

  // What the page saw, for people debugging it and for the browser test: the states in order,
  // the highest progress shown while running, and how the live stream was played.
  const trace = { jobId: null, seenStates: [], maxProgress: 0, hlsMode: null, hlsPlaying: false };
  window.lipsyncPage = trace;

  let engines = [];
  let current = null;      // the job being followed: {id, timer, hlsState, hls}
  let hlsLoading = null;   // the promise of the hls.js script, once asked for

  // -- the API -----------------------------------------------------------------------------

  /** An error answer of the API ({code, message, hint}), or a failure to reach it. */
  class ApiError extends Error {
    constructor(status, body, retryAfter) {
      const b = body && typeof body === 'object' ? body : {};
      let message = b.message;
      if (!message && typeof b.detail === 'string') message = b.detail;
      super(message || `the server answered HTTP ${status}`);
      this.status = status;
      this.code = b.code || null;
      this.hint = b.hint || null;
      if (status === 429 && retryAfter && !this.hint) this.hint = `Try again in ${retryAfter} s.`;
    }
  }

  function token() {
    return $('token').value.trim();
  }

  /** `url` with `?token=` when a token is set: for <video> and <a>, which cannot send a header. */
  function withToken(url) {
    const t = token();
    if (!t) return url;
    return url + (url.includes('?') ? '&' : '?') + 'token=' + encodeURIComponent(t);
  }

  /** fetch() with the token header; the parsed JSON body, or an ApiError. */
  async function api(path, options = {}) {
    const headers = Object.assign({ Accept: 'application/json' }, options.headers || {});
    const t = token();
    if (t) headers.Authorization = 'Bearer ' + t;
    let res;
    try {
      res = await fetch(path, Object.assign({}, options, { headers }));
    } catch (err) {
      throw new ApiError(0, { message: 'The server could not be reached.', hint: String(err && err.message || err) });
    }
    const text = await res.text();
    let body = null;
    if (text) {
      try { body = JSON.parse(text); } catch (_) { body = null; }
    }
    if (!res.ok) throw new ApiError(res.status, body, res.headers.get('Retry-After'));
    return body;
  }

  // -- errors ------------------------------------------------------------------------------

  function showError(err) {
    $('error-message').textContent = (err && err.message) || String(err);
    $('error-hint').textContent = (err && err.hint) || '';
    $('error-hint').hidden = !(err && err.hint);
    $('error').hidden = false;
  }

  function clearError() {
    $('error').hidden = true;
    $('error-message').textContent = '';
    $('error-hint').textContent = '';
  }

  // -- engines and presets -----------------------------------------------------------------

  function option(value, text) {
    const o = document.createElement('option');
    o.value = value;
    o.textContent = text;
    return o;
  }

  async function loadEngines() {
    const select = $('engine');
    try {
      const data = await api('/v1/engines');
      engines = (data && data.engines) || [];
      select.replaceChildren(...engines.map((e) => option(e.name, e.display_name && e.display_name !== e.name ? `${e.display_name} (${e.name})` : e.name)));
      if (data && data.default && engines.some((e) => e.name === data.default)) select.value = data.default;
      clearError();
    } catch (err) {
      engines = [];
      select.replaceChildren(option('', 'unavailable'));
      showError(err);
    }
    showEngine();
  }

  /** The preset select and the option list for the chosen engine. */
  function showEngine() {
    const engine = engines.find((e) => e.name === $('engine').value);
    const presets = (engine && engine.presets) || [];
    const select = $('preset');
    select.replaceChildren(option('', '(engine default)'), ...presets.map((p) => {
      const name = typeof p === 'string' ? p : p.name;
      return option(name, name);
    }));
    $('preset-row').hidden = presets.length === 0;
    const names = ((engine && engine.options) || []).map((o) => o.name).filter((n) => n !== 'preset');
    $('option-help').textContent = names.length ? `Options of ${engine.name}: ${names.join(', ')}.` : '';
  }

  // -- submitting ----------------------------------------------------------------------------

  /** The multipart body of the form, or an Error saying what is missing. */
  function formData() {
    const fd = new FormData();
    if ($('sample').checked) {
      fd.append('sample', 'true');
    } else {
      const image = $('image').files[0];
      const audio = $('audio').files[0];
      if (!image || !audio) {
        const err = new Error('Choose a portrait and an audio file.');
        err.hint = 'Or tick "use the bundled sample".';
        throw err;
      }
      fd.append('image', image, image.name);
      fd.append('audio', audio, audio.name);
    }
    if ($('engine').value) fd.append('engine', $('engine').value);
    if (!$('preset-row').hidden && $('preset').value) fd.append('preset', $('preset').value);
    if ($('hls').checked) fd.append('hls', 'true');
    const text = $('options').value.trim();
    if (text) {
      let parsed;
      try { parsed = JSON.parse(text); } catch (_) { parsed = null; }
      if (!parsed || typeof parsed !== 'object' || Array.isArray(parsed)) {
        const err = new Error('The run options are not a JSON object.');
        err.hint = 'For example {"still": true}.';
        throw err;
      }
      fd.append('options', JSON.stringify(parsed));
    }
    return fd;
  }

  async function submit(event) {
    event.preventDefault();
    clearError();
    let body;
    try {
      body = formData();
    } catch (err) {
      showError(err);
      return;
    }
    const button = $('submit');
    button.disabled = true;
    try {
      const job = await api('/v1/jobs', { method: 'POST', body });
      follow(job);
    } catch (err) {
      showError(err);
    } finally {
      button.disabled = false;
    }
  }

  // -- following a job -----------------------------------------------------------------------

  function follow(job) {
    stopFollowing();
    current = { id: job.id, timer: null, hlsState: 'none', hls: null };
    trace.jobId = job.id;
    trace.seenStates = [];
    trace.maxProgress = 0;
    trace.hlsMode = null;
    trace.hlsPlaying = false;
    $('job-id').textContent = job.id;
    $('job').hidden = false;
    $('result-section').hidden = true;
    $('result').removeAttribute('src');
    render(job);
    poll(current);
  }

  function stopFollowing() {
    if (!current) return;
    clearTimeout(current.timer);
    stopStream(current);
    current = null;
  }

  async function poll(ctx) {
    if (ctx !== current) return;
    try {
      const job = await api('/v1/jobs/' + encodeURIComponent(ctx.id));
      if (ctx !== current) return;
      render(job);
      if (ENDED.has(job.state)) {
        finish(ctx, job);
        return;
      }
      if (job.state === 'running' && job.links && job.links.hls) maybeStartStream(ctx, job.links.hls);
    } catch (err) {
      if (ctx !== current) return;
      showError(err);
      if (err.status === 404) return;  // the job is gone: nothing more to follow
    }
    ctx.timer = setTimeout(() => poll(ctx), POLL_MS);
  }

  function render(job) {
    const state = job.state || 'unknown';
    $('state').textContent = state;
    $('state').dataset.state = state;
    if (trace.seenStates[trace.seenStates.length - 1] !== state) trace.seenStates.push(state);
    const bar = $('progress');
    let p = typeof job.progress === 'number' ? Math.min(1, Math.max(0, job.progress)) : null;
    if (state === 'done') p = 1;
    if (p === null) {
      bar.removeAttribute('value');
      $('percent').textContent = '';
    } else {
      bar.value = p;
      $('percent').textContent = `${Math.round(p * 100)} %`;
      if (state === 'running') trace.maxProgress = Math.max(trace.maxProgress, p);
    }
    $('stage').textContent = job.stage && !ENDED.has(state) ? job.stage : '';
    $('cancel').hidden = !(state === 'queued' || state === 'running');
  }

  function finish(ctx, job) {
    stopStream(ctx);
    $('cancel').hidden = true;
    if (job.state === 'done') {
      const url = withToken((job.links && job.links.video) || `/v1/jobs/${encodeURIComponent(job.id)}/video`);
      const video = $('result');
      video.src = url;
      const link = $('download');
      link.href = url;
      link.setAttribute('download', `lipsync-${job.id}.mp4`);
      $('result-section').hidden = false;
    } else if (job.state === 'failed') {
      showError(job.error || { message: 'The job failed.' });
    }
  }

  async function cancel() {
    if (!current) return;
    const ctx = current;
    $('cancel').disabled = true;
    try {
      const job = await api('/v1/jobs/' + encodeURIComponent(ctx.id), { method: 'DELETE' });
      if (ctx === current && job && job.state) render(job);
    } catch (err) {
      showError(err);
    } finally {
      $('cancel').disabled = false;
    }
  }

  // -- the live HLS stream -------------------------------------------------------------------

  /** Start the player once the playlist exists (it answers 404 until the first segment). */
  async function maybeStartStream(ctx, playlist) {
    if (ctx.hlsState !== 'none') return;
    ctx.hlsState = 'probing';
    let ready = false;
    try {
      const headers = token() ? { Authorization: 'Bearer ' + token() } : {};
      ready = (await fetch(playlist, { headers, cache: 'no-store' })).ok;
    } catch (_) {
      ready = false;
    }
    if (ctx !== current) return;
    if (!ready) {
      ctx.hlsState = 'none';  // the next poll asks again
      return;
    }
    ctx.hlsState = 'playing';
    $('hls-link').href = withToken(playlist);
    $('stream').hidden = false;
    try {
      await play(ctx, playlist);
    } catch (err) {
      setHlsMode('link', `(the browser cannot play it here: ${err.message || err})`);
    }
  }

  function setHlsMode(mode, text) {
    trace.hlsMode = mode;
    $('hls-mode').textContent = text || '';
    $('stream').dataset.mode = mode;
  }

  /**
   * hls.js where Media Source Extensions exist: it sends the token as a header on every request,
   * and the segment URLs in the playlist carry none.  Otherwise the browser's own HLS player.
   */
  async function play(ctx, playlist) {
    const video = $('hls-player');
    if (window.MediaSource || window.ManagedMediaSource) {
      const Hls = await loadHlsJs();
      if (ctx !== current) return;
      if (Hls && Hls.isSupported()) {
        const t = token();
        const hls = new Hls({
          startPosition: 0,
          xhrSetup: (xhr) => { if (t) xhr.setRequestHeader('Authorization', 'Bearer ' + t); },
        });
        ctx.hls = hls;
        hls.on(Hls.Events.ERROR, (_event, data) => {
          if (data && data.fatal) setHlsMode('link', `(stream error: ${data.details})`);
        });
        hls.loadSource(playlist);
        hls.attachMedia(video);
        setHlsMode('hls.js', '(played with hls.js)');
        video.play().catch(() => {});
        return;
      }
    }
    if (video.canPlayType('application/vnd.apple.mpegurl')) {
      video.src = withToken(playlist);
      setHlsMode('native', '(played by the browser)');
      video.play().catch(() => {});
      return;
    }
    setHlsMode('link', '(this browser cannot play HLS; open the playlist in a player)');
  }

  function loadHlsJs() {
    if (window.Hls) return Promise.resolve(window.Hls);
    if (!hlsLoading) {
      hlsLoading = new Promise((resolve) => {
        const script = document.createElement('script');
        script.src = HLS_JS_URL;
        script.onload = () => resolve(window.Hls || null);
        script.onerror = () => { hlsLoading = null; resolve(null); };
        document.head.appendChild(script);
      });
    }
    return hlsLoading;
  }

  function stopStream(ctx) {
    if (ctx.hls) {
      ctx.hls.destroy();
      ctx.hls = null;
    }
    const video = $('hls-player');
    if (video.getAttribute('src')) {
      video.pause();
      video.removeAttribute('src');
      video.load();
    }
    $('stream').hidden = true;
  }

  // -- wiring --------------------------------------------------------------------------------

  function syncSample() {
    const on = $('sample').checked;
    $('image').disabled = on;
    $('audio').disabled = on;
  }

  function init() {
    $('token').value = localStorage.getItem(TOKEN_KEY) || '';
    $('token').addEventListener('change', () => {
      const t = token();
      if (t) localStorage.setItem(TOKEN_KEY, t); else localStorage.removeItem(TOKEN_KEY);
      loadEngines();
    });
    $('engine').addEventListener('change', showEngine);
    $('sample').addEventListener('change', syncSample);
    $('job-form').addEventListener('submit', submit);
    $('cancel').addEventListener('click', cancel);
    $('hls-player').addEventListener('playing', () => { trace.hlsPlaying = true; });
    syncSample();
    loadEngines();
  }

  init();
})();
