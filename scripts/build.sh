#!/usr/bin/env bash
# Build the geats binary to install: release, statically linked (glibc's
# crt-static, a static-pie), at target/release/geats.
#
# geats is started once per request, and a dynamically linked binary spends
# about a millisecond of every request in the loader: mapping libc, libm and
# libgcc_s and applying their relocations (docs/performance.md). geats looks
# up no users, hosts or services through NSS, so static glibc costs it
# nothing. `cargo rustc` gives the flag to the binary's own link only (a
# RUSTFLAGS setting would also reach the proc-macro crates, which cannot be
# static). `cargo build --release` still builds a working, dynamic binary.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo rustc --release --quiet --bin geats -- -C target-feature=+crt-static
