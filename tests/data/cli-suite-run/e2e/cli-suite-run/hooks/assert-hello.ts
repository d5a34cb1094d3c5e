// BodyAssertHooks for the two cases of fragment.suite.yaml: an empty list passes.
type Issue = { path: string; expected?: unknown; actual?: unknown; reason?: string };

function hello(actual: any, dep: string): Issue[] {
  if (!actual || typeof actual !== 'object') {
    return [{ path: '$', reason: 'expected object', actual }];
  }
  const issues: Issue[] = [];
  if (actual.message !== 'hello') issues.push({ path: '$.message', expected: 'hello', actual: actual.message });
  if (actual.dep !== dep) issues.push({ path: '$.dep', expected: dep, actual: actual.dep });
  return issues;
}

// happy-path: the dependency's answer is the one rewriteDep wrote into the mock.
export function helloShape({ actual, env }: any) {
  return hello(actual, (env && env.FRAGMENT_DEP_VALUE) || 'mutated-by-cli');
}

// fragment-down: the inline 503 mock's body comes through.
export function helloUnavailable({ actual }: any) {
  return hello(actual, 'unavailable');
}
