// Prints the staging folder of JupyterLab in the Python that runs the build, for
// `build-labextension --core-path` (package.json's build:labextension scripts).
//
// The interpreter is $NBSCALE_BUILD_PYTHON: setup.py's build hook sets it to the
// Python that runs `pip install` / `python -m build` (sys.executable), and
// .ci/build-extension.sh to its $PYTHON. Without it (`npm run build` by hand) it is
// the first `python` (then `python3`) on PATH, as in an activated virtual
// environment. Whatever goes wrong is one line on stderr and exit status 1, so the
// builder never starts with an empty --core-path.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { isAbsolute, resolve } from 'node:path';

const REQUIREMENT = 'jupyterlab>=4.1,<5';
const MISSING = 3; // the snippet's exit status when jupyterlab cannot be imported

const SNIPPET = `
import os, sys
print(sys.executable)
try:
    import jupyterlab
except ImportError:
    sys.exit(${MISSING})
print(jupyterlab.__version__)
print(os.path.join(os.path.dirname(jupyterlab.__file__), "staging"))
`;

function fail(message) {
  console.error(`nbscale panel build: ${message.replace(/\n\s*/g, ' ')}`);
  process.exit(1);
}

/** [command, how it was chosen] for each interpreter to try, in order. */
function candidates(env) {
  const chosen = env.NBSCALE_BUILD_PYTHON;
  if (chosen) {
    // a relative path means relative to where npm was started, not extension/
    const base = env.INIT_CWD || process.cwd();
    const command =
      chosen.includes('/') && !isAbsolute(chosen)
        ? resolve(base, chosen)
        : chosen;
    return [[command, 'from NBSCALE_BUILD_PYTHON']];
  }
  const how = 'first on PATH; NBSCALE_BUILD_PYTHON is not set';
  return [
    ['python', how],
    ['python3', how]
  ];
}

const FIX_PYTHON =
  'point NBSCALE_BUILD_PYTHON at a Python that has JupyterLab (e.g. NBSCALE_BUILD_PYTHON=venv/bin/python npm run build)';

function labStaging(env) {
  const tried = [];
  for (const [command, how] of candidates(env)) {
    const run = spawnSync(command, ['-c', SNIPPET], {
      encoding: 'utf8',
      env
    });
    if (run.error && run.error.code === 'ENOENT') {
      tried.push(command);
      continue;
    }
    const [executable, version, staging] = (run.stdout || '')
      .trim()
      .split('\n');
    const who = `${executable || command} (${how})`;
    if (run.status === MISSING && executable) {
      fail(
        `JupyterLab was not found in the Python interpreter ${who}; install it there
         ("${executable}" -m pip install "${REQUIREMENT}") or ${FIX_PYTHON}`
      );
    }
    if (run.error || run.status !== 0 || !staging) {
      const why = run.error
        ? run.error.message
        : `exit status ${run.status}` +
          ((run.stderr || '').trim()
            ? `: ${(run.stderr || '').trim().split('\n').pop()}`
            : '');
      fail(
        `the Python interpreter ${who} failed (${why}) before it could look for JupyterLab; ${FIX_PYTHON}`
      );
    }
    if (!/^4\./.test(version)) {
      fail(
        `the Python interpreter ${who} has JupyterLab ${version}; the panel builds against
         JupyterLab 4 ("${executable}" -m pip install "${REQUIREMENT}")`
      );
    }
    if (!existsSync(staging)) {
      fail(
        `JupyterLab ${version} in ${who} has no staging folder (${staging});
         reinstall it ("${executable}" -m pip install --force-reinstall "${REQUIREMENT}")`
      );
    }
    console.error(
      `nbscale panel build: JupyterLab ${version} of ${executable} (${how})`
    );
    return staging;
  }
  const names = tried.map(c => `"${c}"`).join(' or ');
  return fail(`no Python interpreter ${names} could be started; ${FIX_PYTHON}`);
}

console.log(labStaging(process.env));
