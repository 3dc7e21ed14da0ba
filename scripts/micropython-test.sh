#!/bin/sh
# Run agent/ledger's pure rules under real MicroPython and compare with CPython.
#
# MicroPython 1.27 (the WebAssembly port, npm @micropython/micropython-webassembly-pyscript)
# runs under this machine's Node.js. It is installed on first use into .mpy/, a folder
# that ignores itself in git (.mpy/.gitignore is "*"). The program
# tests/ledger/mpy_program.py is run by both interpreters; the outputs must be identical
# and end in "ok N". Exit 0 on success, 1 on a difference or an error, 2 when node/npm
# are missing or the package cannot be installed.
#
#   PYTHON=... (default .venv/bin/python, else python3)   MPY_DIR=... (default .mpy)
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
MPY_DIR=${MPY_DIR:-$ROOT/.mpy}
PKG=@micropython/micropython-webassembly-pyscript
VERSION=1.27.0
PYTHON=${PYTHON:-}
if [ -z "$PYTHON" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

command -v node >/dev/null 2>&1 || { echo "micropython-test: node is not installed" >&2; exit 2; }
MJS="$MPY_DIR/node_modules/$PKG/micropython.mjs"
if [ ! -f "$MJS" ]; then
  command -v npm >/dev/null 2>&1 || { echo "micropython-test: npm is not installed" >&2; exit 2; }
  mkdir -p "$MPY_DIR"
  printf '*\n' > "$MPY_DIR/.gitignore"
  echo "micropython-test: installing $PKG@$VERSION into $MPY_DIR" >&2
  if ! npm install --prefix "$MPY_DIR" --no-audit --no-fund --no-save --silent \
      "$PKG@$VERSION" >&2; then
    echo "micropython-test: npm install $PKG@$VERSION failed" >&2
    exit 2
  fi
fi

# The runner: MicroPython in WebAssembly has its own in-memory file system, so the
# ledger's sources are copied in (agent/__init__.py, agent/errors.py, agent/vocab.py, agent/ledger/*.py)
# with micropython-lib's no-op __future__ module, and the program runs from there.
cat > "$MPY_DIR/run.mjs" <<'EOF'
import { readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
const [mjs, root, program] = process.argv.slice(2);
const { loadMicroPython } = await import(mjs);
const chunks = [];  // stdout arrives as byte arrays (linebuffer: false)
const mp = await loadMicroPython({
  heapsize: 64 * 1024 * 1024,
  stdout: (data) => { chunks.push(Buffer.from(data)); },
  stderr: (data) => { process.stderr.write(Buffer.from(data)); },
  linebuffer: false,
});
const output = () => Buffer.concat(chunks);
const FS = mp.FS;
for (const dir of ["/lib", "/lib/agent", "/lib/agent/ledger"]) FS.mkdir(dir);
FS.writeFile("/lib/__future__.py", "annotations = None\n");
for (const name of ["__init__.py", "errors.py", "vocab.py"]) {
  FS.writeFile(`/lib/agent/${name}`, readFileSync(join(root, "agent", name)));
}
for (const name of readdirSync(join(root, "agent", "ledger"))) {
  if (name.endsWith(".py")) {
    FS.writeFile(`/lib/agent/ledger/${name}`, readFileSync(join(root, "agent", "ledger", name)));
  }
}
try {
  mp.runPython("import sys\nsys.path.insert(0, '/lib')\nprint(sys.implementation.name, " +
               "sys.implementation.version[:2])");
  mp.runPython(readFileSync(program, "utf8"));
} catch (error) {
  process.stdout.write(output());
  console.error(error.message || String(error));
  process.exit(1);
}
process.stdout.write(output());
EOF

PROGRAM=tests/ledger/mpy_program.py
EXPECTED="$MPY_DIR/expected.txt"
ACTUAL="$MPY_DIR/actual.txt"
PYTHONPATH="$ROOT" "$PYTHON" "$PROGRAM" > "$EXPECTED"
node "$MPY_DIR/run.mjs" "$MJS" "$ROOT" "$PROGRAM" > "$MPY_DIR/raw.txt" || {
  cat "$MPY_DIR/raw.txt"
  echo "micropython-test: the program failed under MicroPython" >&2
  exit 1
}
head -n 1 "$MPY_DIR/raw.txt" | grep -q '^micropython (1, 27)$' || {
  echo "micropython-test: not MicroPython 1.27: $(head -n 1 "$MPY_DIR/raw.txt")" >&2
  exit 1
}
tail -n +2 "$MPY_DIR/raw.txt" > "$ACTUAL"
if ! diff -u "$EXPECTED" "$ACTUAL"; then
  echo "micropython-test: MicroPython and CPython disagree (diff above)" >&2
  exit 1
fi
echo "micropython-test: $(tail -n 1 "$ACTUAL") lines identical under CPython and $(head -n 1 "$MPY_DIR/raw.txt")"
