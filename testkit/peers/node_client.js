// Node's own `http` module as a client of an explicit proxy, the way Node does it by default:
// http.request({host: PROXY, port: PROXYPORT, path: 'http://upstream/...'}) sends an
// absolute-form request-target with `Host:` set to the PROXY's address, not the upstream's.
//
// stdin: {"proxyHost", "proxyPort", "calls": [{"name", "method", "url", "headers", "body_b64"}]}
// stdout: one JSON array, one entry per call: {name, status, httpVersion, rawHeaders, body_b64, error}
'use strict';
const http = require('http');
const zlib = require('zlib');

function send(spec, call) {
  return new Promise((resolve) => {
    const body = call.body_b64 ? Buffer.from(call.body_b64, 'base64') : null;
    const headers = Object.assign({}, call.headers);
    if (body) headers['content-length'] = String(body.length);
    const req = http.request({
      host: spec.proxyHost, port: spec.proxyPort, method: call.method, path: call.url,
      headers, agent: false,  // a connection per call: one case cannot break the next
    }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        let data = Buffer.concat(chunks);
        try {
          if ((res.headers['content-encoding'] || '') === 'gzip') data = zlib.gunzipSync(data);
        } catch (e) {
          resolve({ name: call.name, error: `gunzip: ${e.message}` });
          return;
        }
        resolve({ name: call.name, status: res.statusCode, httpVersion: res.httpVersion,
                  rawHeaders: res.rawHeaders, body_b64: data.toString('base64') });
      });
      res.on('error', (e) => resolve({ name: call.name, error: `${e.code || ''} ${e.message}` }));
    });
    req.setTimeout(15000, () => req.destroy(new Error('timed out after 15 s')));
    req.on('error', (e) => resolve({ name: call.name, error: `${e.code || ''} ${e.message}` }));
    if (body) req.write(body);
    req.end();
  });
}

async function main() {
  const input = [];
  for await (const chunk of process.stdin) input.push(chunk);
  const spec = JSON.parse(Buffer.concat(input).toString());
  const results = [];
  for (const call of spec.calls) results.push(await send(spec, call));
  process.stdout.write(JSON.stringify(results));
}

main();
