// k6 check that bad input gets the OpenAI error envelope with the right status, under load,
// and never disturbs good requests running beside it. Run:
//   k6 run --no-usage-report loadtest/k6/errors.js
// Environment: GENIE_URL (default http://127.0.0.1:8000), VUS (2), DURATION (10s).
import http from 'k6/http';
import { check } from 'k6';

const BASE = (__ENV.GENIE_URL || 'http://127.0.0.1:8000').replace(/\/$/, '');

export const options = {
  scenarios: {
    bad: { executor: 'constant-vus', vus: parseInt(__ENV.VUS || '2'), duration: __ENV.DURATION || '10s', exec: 'bad' },
    good: { executor: 'constant-vus', vus: 1, duration: __ENV.DURATION || '10s', exec: 'good' },
  },
  thresholds: { checks: ['rate==1.0'] },
};

export function setup() {
  return { model: http.get(`${BASE}/v1/models`).json().data[0].id };
}

const json = { headers: { 'Content-Type': 'application/json' } };

function envelope(r, status, param) {
  if (r.status !== status) return false;
  const e = r.json().error;
  return e !== undefined && typeof e.message === 'string' && (param === undefined || e.param === param);
}

export function bad(data) {
  check(http.post(`${BASE}/v1/chat/completions`, '{"model": ', json), {
    'malformed JSON: 400 envelope': (r) => envelope(r, 400),
  });
  check(http.post(`${BASE}/v1/chat/completions`, JSON.stringify({ model: data.model }), json), {
    'missing messages: 400 naming the field': (r) => envelope(r, 400, 'messages'),
  });
  check(http.post(`${BASE}/v1/chat/completions`, JSON.stringify({
    model: data.model, messages: [{ role: 'user', content: 'hi' }], temperature: -1,
  }), json), {
    'bad temperature: 400 naming the field': (r) => envelope(r, 400, 'temperature'),
  });
  check(http.post(`${BASE}/v1/chat/completions`, JSON.stringify({
    model: 'no-such-model', messages: [{ role: 'user', content: 'hi' }],
  }), json), {
    'unknown model: 404': (r) => envelope(r, 404),
  });
  check(http.post(`${BASE}/v1/completions`, JSON.stringify({
    model: data.model, prompt: 'hi', max_tokens: 100000,
  }), json), {
    'beyond the context: 400 with both numbers': (r) => envelope(r, 400) && /\d+/.test(r.json().error.message),
  });
}

export function good(data) {
  const r = http.post(`${BASE}/v1/chat/completions`, JSON.stringify({
    model: data.model, messages: [{ role: 'user', content: 'Say hi.' }], max_tokens: 8,
  }), json);
  check(r, { 'good request beside bad ones: 200': (x) => x.status === 200 });
}
