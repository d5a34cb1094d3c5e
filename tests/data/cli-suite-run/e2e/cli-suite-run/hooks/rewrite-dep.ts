// MockResponseHook: the recorded /fragment answer with `dep` set to $FRAGMENT_DEP_VALUE (default
// "mutated-by-cli"), so a live upstream's "ok" can never pass for the mock.
export function rewriteDep({ capturedResponse, env }: any) {
  let body: Record<string, unknown>;
  try {
    body = JSON.parse(capturedResponse.body);
  } catch {
    return {};
  }
  body.dep = (env && env.FRAGMENT_DEP_VALUE) || 'mutated-by-cli';
  return { body: JSON.stringify(body) };
}
