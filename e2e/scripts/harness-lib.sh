# Shared by the scripts that need the local harness: source this file, then call ensure_harness.
# It starts the harness when it is not running and arranges to stop only what it started.

harness_started=0

ensure_harness() {
  if ! make -s cluster-status >/dev/null 2>&1; then
    make -s tools
    make -s cluster-up
    harness_started=1
  fi
  eval "$(make -s env)"
  export PATH="$WEIR_TOOLS_BIN:$PATH"
}

stop_harness_if_started() {
  if ((harness_started)); then make -s cluster-down; fi
}

# A free TCP port on loopback.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}
