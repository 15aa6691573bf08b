// k6 load test for Genie's OpenAI API: chat completions streamed and not, and a
// first-token probe, with thresholds on latency and errors. Run:
//   k6 run --no-usage-report loadtest/k6/chat.js
// Environment: GENIE_URL (default http://127.0.0.1:8000), GENIE_MODEL (default: the first
// model of /v1/models), VUS (2), DURATION (20s), MAX_TOKENS (32), TTFT_P95_MS (3000),
// E2E_P95_MS (15000), GENIE_API_KEY (optional bearer token).
//
// k6 reads a response only when it is complete, so time to first token is measured by a
// probe asking for exactly one token (`max_tokens: 1`): its duration is what a client waits
// for the first token at this load. Streams are checked for shape (chunks, [DONE]).
import http from 'k6/http';
import { check } from 'k6';
import { Rate, Trend } from 'k6/metrics';

const BASE = (__ENV.GENIE_URL || 'http://127.0.0.1:8000').replace(/\/$/, '');
const VUS = parseInt(__ENV.VUS || '2');
const DURATION = __ENV.DURATION || '20s';
const MAX_TOKENS = parseInt(__ENV.MAX_TOKENS || '32');
const TTFT_P95_MS = __ENV.TTFT_P95_MS || '3000';
const E2E_P95_MS = __ENV.E2E_P95_MS || '15000';

const ttft = new Trend('genie_ttft', true);
const e2e = new Trend('genie_e2e', true);
const outputTokensPerS = new Trend('genie_output_tokens_per_s');
const badAnswers = new Rate('genie_bad_answers');

export const options = {
  scenarios: {
    chat: { executor: 'constant-vus', vus: VUS, duration: DURATION, exec: 'chat' },
    stream: { executor: 'constant-vus', vus: VUS, duration: DURATION, exec: 'chatStream' },
    first_token: { executor: 'constant-vus', vus: 1, duration: DURATION, exec: 'firstToken' },
  },
  thresholds: {
    http_req_failed: ['rate<0.01'],
    genie_bad_answers: ['rate<0.01'],
    checks: ['rate>0.99'],
    genie_ttft: [`p(95)<${TTFT_P95_MS}`],
    genie_e2e: [`p(95)<${E2E_P95_MS}`],
  },
};

function headers() {
  const h = { 'Content-Type': 'application/json' };
  if (__ENV.GENIE_API_KEY) h.Authorization = `Bearer ${__ENV.GENIE_API_KEY}`;
  return { headers: h, timeout: '120s' };
}

export function setup() {
  if (__ENV.GENIE_MODEL) return { model: __ENV.GENIE_MODEL };
  const r = http.get(`${BASE}/v1/models`, headers());
  if (r.status !== 200) throw new Error(`GET /v1/models answered ${r.status}: ${r.body}`);
  return { model: r.json().data[0].id };
}

const TOPICS = ['the sea', 'a mountain', 'the city at night', 'an old library', 'a garden', 'the moon'];

function ask(model, extra) {
  const topic = TOPICS[Math.floor(Math.random() * TOPICS.length)];
  return JSON.stringify(Object.assign({
    model,
    messages: [{ role: 'user', content: `Write a few sentences about ${topic}.` }],
    max_tokens: MAX_TOKENS,
    temperature: 0.7,
  }, extra));
}

export function chat(data) {
  const r = http.post(`${BASE}/v1/chat/completions`, ask(data.model, {}), headers());
  const ok = check(r, {
    'chat: status 200': (x) => x.status === 200,
    'chat: has content': (x) => x.status === 200 && x.json().choices[0].message.content.length > 0,
    'chat: usage within max_tokens': (x) => x.status === 200
      && x.json().usage.completion_tokens >= 1 && x.json().usage.completion_tokens <= MAX_TOKENS,
  });
  badAnswers.add(!ok);
  if (r.status === 200) {
    e2e.add(r.timings.duration);
    outputTokensPerS.add(r.json().usage.completion_tokens / (r.timings.duration / 1000));
  }
}

export function chatStream(data) {
  const r = http.post(`${BASE}/v1/chat/completions`,
    ask(data.model, { stream: true, stream_options: { include_usage: true } }), headers());
  const body = r.body || '';
  const ok = check(r, {
    'stream: status 200': (x) => x.status === 200,
    'stream: event-stream': (x) => (x.headers['Content-Type'] || '').startsWith('text/event-stream'),
    'stream: chunks then [DONE]': () => body.includes('"chat.completion.chunk"')
      && body.trimEnd().endsWith('data: [DONE]'),
    'stream: usage chunk': () => body.includes('"completion_tokens"'),
    'stream: no error event': () => !body.includes('"error"'),
  });
  badAnswers.add(!ok);
  if (r.status === 200) e2e.add(r.timings.duration);
}

export function firstToken(data) {
  const r = http.post(`${BASE}/v1/chat/completions`, ask(data.model, { max_tokens: 1 }), headers());
  const ok = check(r, {
    'first token: status 200': (x) => x.status === 200,
    'first token: exactly one token': (x) => x.status === 200 && x.json().usage.completion_tokens === 1,
  });
  badAnswers.add(!ok);
  if (r.status === 200) ttft.add(r.timings.duration);
}
