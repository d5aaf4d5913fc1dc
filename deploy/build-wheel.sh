#!/usr/bin/env bash
# The release wheel into dist/: what `make wheel` runs and the Dockerfile's build stage runs.
# Checks that the wheel carries the Rust extension and the Redis functions (klawd.lua).
set -euo pipefail
cd "$(dirname "$0")/.."
MATURIN="${MATURIN:-maturin}"
PYTHON="${PYTHON:-python3}"
rm -f dist/klawd_gateway-*.whl
"$MATURIN" build --release --out dist --interpreter "$PYTHON"
wheel=$(ls dist/klawd_gateway-*.whl)
"$PYTHON" - "$wheel" <<'PY'
import sys
import zipfile

names = zipfile.ZipFile(sys.argv[1]).namelist()
required = ["gateway/store/lua/klawd.lua", "gateway/py.typed", "gateway/_core.pyi"]
missing = [n for n in required if n not in names]
if not any(n.startswith("gateway/_core.") and n.endswith(".so") for n in names):
    missing.append("gateway/_core.*.so")
if missing:
    sys.exit(f"{sys.argv[1]} lacks {missing}")
print(f"{sys.argv[1]}: {len(names)} files, extension and klawd.lua included")
PY
