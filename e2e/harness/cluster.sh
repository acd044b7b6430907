#!/usr/bin/env bash
# Local Kubernetes cluster + services harness for Weir's e2e tests.
#
# Usage: e2e/harness/cluster.sh up|down|env|status
#   up      start everything (idempotent: if it is already up and healthy, print env and exit 0)
#   down    stop the processes this script started (pid files) and delete their state
#   env     print `export` lines only, so `eval "$(make -s env)"` works
#   status  print the health of each component; exit 0 only if all are up
#
# Everything listens on 127.0.0.1 only, on free ports picked at `up` (20000-32767, below
# the kernel's ephemeral range). Tools come from `make tools` ($WEIR_TOOLS_DIR/bin/current).
# Debian packages (nginx, fcgiwrap, openssh-server, docker-registry, apache2-utils) are
# apt-installed when missing.
#
# Components (each its own session/process group, pid in run/<name>.pid, log in <name>.log):
#   etcd, kube-apiserver (RBAC, client-cert admin in system:masters, SA signing keys),
#   kube-controller-manager, kube-scheduler, kwok (manages Node "kwok-node-0"),
#   fcgiwrap + nginx (git smart HTTP via git-http-backend, and the Helm chart repo),
#   sshd (git over SSH), docker-registry x2 (anonymous, and htpasswd auth).
#
# Options (env): WEIR_CLUSTER_STATE  another state dir than $WEIR_TOOLS_DIR/cluster, so a second
#   cluster can run beside the first (`make bench-flux` starts fresh ones this way);
#   WEIR_APISERVER_AUDIT=1  kube-apiserver writes an audit log of every request (metadata level)
#   to <state>/audit.log, one JSON line each, which benchmarks count API requests from.
#   WEIR_KCM_QPS=N  kube-controller-manager's client rate limit (default 20/s, burst 30 per
#   controller), which bounds how fast Deployments created in bulk become current.
#
# State: $WEIR_TOOLS_DIR/cluster (default <repo>/.tools/cluster), removed by `down`:
#   admin.kubeconfig  env.sh  ports.env  *.log  pki/  etcd/  run/  git/  charts/  ssh/
#   nginx/  registry/  registry-auth/  gitconfig
#
# Env contract (written to env.sh at the end of `up`, printed by `env`):
#   KUBECONFIG                admin kubeconfig (cluster-admin via system:masters, certs embedded)
#   WEIR_TOOLS_BIN            dir with kubectl, kustomize, helm, kwok, etcd, kube-*
#   WEIR_GIT_ROOT             dir of the bare repos; create one with
#                             `git init --bare "$WEIR_GIT_ROOT/<name>.git"`. Every repo is
#                             served under all of the URL forms below.
#   WEIR_GIT_HTTP_URL         http://127.0.0.1:PORT; repo URLs:
#                               $WEIR_GIT_HTTP_URL/public/<name>.git   anonymous, fetch + push
#                               $WEIR_GIT_HTTP_URL/private/<name>.git  basic auth, fetch + push
#                               $WEIR_GIT_HTTP_URL/token/<name>.git    `Authorization: Bearer
#                                                                      $WEIR_GIT_HTTP_TOKEN`
#   WEIR_GIT_HTTP_USER, WEIR_GIT_HTTP_PASSWORD   basic-auth credentials for /private/
#   WEIR_GIT_HTTP_TOKEN       bearer token for /token/
#   WEIR_GIT_SSH_URL          ssh://<user>@127.0.0.1:PORT; repo URL:
#                               $WEIR_GIT_SSH_URL$WEIR_GIT_ROOT/<name>.git
#   WEIR_GIT_SSH_IDENTITY     private key (ed25519, no passphrase) accepted by that sshd
#   WEIR_GIT_SSH_KNOWN_HOSTS  known_hosts file with the line for [127.0.0.1]:PORT
#   WEIR_REGISTRY             host:port of an OCI registry without auth (plain HTTP)
#   WEIR_REGISTRY_AUTH        host:port of an OCI registry with basic auth (plain HTTP)
#   WEIR_REGISTRY_USER, WEIR_REGISTRY_PASSWORD   its credentials
#   WEIR_CHARTS_URL           http://127.0.0.1:PORT  Helm chart repository (index.yaml at root)
#   WEIR_CHARTS_DIR           the directory it serves; publish with e2e/harness/publish-chart.sh
set -euo pipefail
set +m

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
# shellcheck source=versions.env
. "$HERE/versions.env"

TOOLS_DIR="${WEIR_TOOLS_DIR:-$ROOT/.tools}"
BIN="$TOOLS_DIR/bin/current"
STATE="${WEIR_CLUSTER_STATE:-$TOOLS_DIR/cluster}"
RUN="$STATE/run"
PKI="$STATE/pki"
ENV_FILE="$STATE/env.sh"
KUBECONFIG_FILE="$STATE/admin.kubeconfig"
NODE_NAME=kwok-node-0
SERVICE_CIDR=10.96.0.0/16

# Fixed test credentials (loopback-only test services).
GIT_HTTP_USER=weir
GIT_HTTP_PASSWORD=weir-git-password
GIT_HTTP_TOKEN=weir-git-token
REGISTRY_USER=weir
REGISTRY_PASSWORD=weir-registry-password

# Stop order (reverse of start).
COMPONENTS=(kwok kube-scheduler kube-controller-manager kube-apiserver etcd nginx fcgiwrap sshd registry registry-auth)
PORT_NAMES=(ETCD_PORT ETCD_PEER_PORT APISERVER_PORT KCM_PORT SCHEDULER_PORT KWOK_PORT GIT_HTTP_PORT GIT_HTTPS_PORT CHARTS_PORT SSH_PORT REGISTRY_PORT REGISTRY_AUTH_PORT)

export PATH="$BIN:$PATH"

log() { echo "cluster.sh: $*"; }
die() { echo "cluster.sh: ERROR: $*" >&2; exit 1; }
curl_q() { curl -sS --max-time 3 "$@"; }

# --- processes -----------------------------------------------------------------------

proc_starttime() { # pid -> field 22 of /proc/pid/stat (guards against pid reuse)
	local stat
	stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
	stat="${stat##*) }"
	# shellcheck disable=SC2086
	set -- $stat
	echo "${20}"
}

# start_bg NAME CMD... : run detached in its own session (pgid == pid), log to NAME.log.
start_bg() {
	local name="$1"; shift
	setsid "$@" >>"$STATE/$name.log" 2>&1 </dev/null 9>&- &
	local pid=$!
	echo "$pid $(proc_starttime "$pid" || echo 0)" >"$RUN/$name.pid"
}

# pid of a component if it is still the process we started, else fail.
live_pid() {
	local f="$RUN/$1.pid" pid st
	[ -f "$f" ] || return 1
	read -r pid st <"$f" || return 1
	[ -n "$pid" ] && [ -d "/proc/$pid" ] || return 1
	[ "$(proc_starttime "$pid" || true)" = "$st" ] || return 1
	echo "$pid"
}

# group_alive PID: live processes left in the session we started (setsid => sid == pgid == PID).
# The kernel does not reuse a pid while it is still some live group's pgid/sid.
# Zombies (dead, waiting for init to reap them) do not count.
group_alive() { ps -o stat= -s "$1" 2>/dev/null | grep -qv "^Z"; }

# stop_one NAME: TERM its process group, wait up to 15s, then KILL.
stop_one() {
	local name="$1" f="$RUN/$1.pid" pid st i
	[ -f "$f" ] || return 0
	read -r pid st <"$f" || true
	if [ -n "${pid:-}" ] && { live_pid "$name" >/dev/null || group_alive "$pid"; }; then
		kill -TERM -- "-$pid" 2>/dev/null || true
		for ((i = 0; i < 150; i++)); do
			group_alive "$pid" || break
			sleep 0.1
		done
		if group_alive "$pid"; then
			log "$name (pgid $pid) did not stop in 15s, killing"
			kill -KILL -- "-$pid" 2>/dev/null || true
			sleep 0.2
		fi
	fi
	rm -f "$f"
}

stop_all() {
	local c pid st sids=() i
	for c in "${COMPONENTS[@]}"; do
		if [ -f "$RUN/$c.pid" ] && read -r pid st <"$RUN/$c.pid"; then sids+=("$pid"); fi
		stop_one "$c"
	done
	# The stopped processes were reparented to init; give it up to 5s to reap them so
	# that `ps` right after `down` shows nothing of ours (zombies included).
	for ((i = 0; i < 50 && ${#sids[@]} > 0; i++)); do
		ps -o pid= -s "$(IFS=,; echo "${sids[*]}")" >/dev/null 2>&1 || break
		sleep 0.1
	done
}

# wait_for COMPONENT TIMEOUT_SECS WHAT CMD... : poll CMD until it succeeds.
wait_for() {
	local comp="$1" timeout="$2" what="$3"; shift 3
	local deadline=$((SECONDS + timeout))
	local last
	until "$@" >/dev/null 2>&1; do
		last="$(grep -v '^[[:space:]]*$' "$STATE/$comp.log" 2>/dev/null | tail -n1 | cut -c1-300 || true)"
		live_pid "$comp" >/dev/null ||
			die "$comp exited while waiting for $what (log: $STATE/$comp.log; last line: ${last:-<empty>})"
		((SECONDS < deadline)) ||
			die "$comp: $what not reached after ${timeout}s (log: $STATE/$comp.log; last line: ${last:-<empty>})"
		sleep 0.2
	done
}

# --- ports, packages, tools ------------------------------------------------------------

pick_ports() {
	local used=" " name p tries
	for name in "${PORT_NAMES[@]}"; do
		tries=0
		while :; do
			((tries++ < 200)) || die "could not find a free loopback port"
			p=$((20000 + RANDOM % 12768))
			[[ "$used" == *" $p "* ]] && continue
			[ -z "$(ss -Htan "( sport = :$p )" 2>/dev/null)" ] || continue
			break
		done
		used+="$p "
		echo "$name=$p"
	done
}

ensure_packages() {
	local need=()
	[ -x /usr/sbin/nginx ] || need+=(nginx)
	[ -x /usr/sbin/fcgiwrap ] || need+=(fcgiwrap)
	[ -x /usr/sbin/sshd ] || need+=(openssh-server)
	{ command -v ssh && command -v ssh-keygen; } >/dev/null || need+=(openssh-client)
	[ -x /usr/bin/docker-registry ] || need+=(docker-registry)
	command -v htpasswd >/dev/null || need+=(apache2-utils)
	[ -x /usr/lib/git-core/git-http-backend ] || need+=(git)
	command -v openssl >/dev/null || need+=(openssl)
	command -v curl >/dev/null || need+=(curl)
	command -v setsid >/dev/null && command -v pgrep >/dev/null && command -v ss >/dev/null ||
		need+=(util-linux procps iproute2)
	[ ${#need[@]} -eq 0 ] && return 0
	[ "$(id -u)" = 0 ] || die "missing Debian packages: ${need[*]} (install them, or run as root)"
	log "installing Debian packages: ${need[*]}"
	# Never let package scripts start system services (they would listen on 0.0.0.0).
	local guard=""
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
		guard=1
	fi
	local rc=0
	{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"; } \
		>"$TOOLS_DIR/apt.log" 2>&1 || rc=$?
	[ -z "$guard" ] || rm -f /usr/sbin/policy-rc.d
	[ "$rc" -eq 0 ] || die "apt-get install ${need[*]} failed (log: $TOOLS_DIR/apt.log)"
}

ensure_tools() {
	local b missing=()
	for b in etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok helm kustomize flux; do
		[ -x "$BIN/$b" ] || missing+=("$b")
	done
	[ ${#missing[@]} -eq 0 ] || die "tools not built: ${missing[*]} (run: make tools)"
}

# --- certificates and kubeconfigs --------------------------------------------------------

gen_certs() {
	mkdir -p "$PKI"
	(
		cd "$PKI"
		openssl ecparam -name prime256v1 -genkey -noout -out ca.key
		openssl req -x509 -new -key ca.key -sha256 -days 3650 -subj "/CN=weir-e2e-ca" \
			-addext "basicConstraints=critical,CA:TRUE" \
			-addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" -out ca.crt
		# leaf NAME SUBJECT EXT
		leaf() {
			openssl ecparam -name prime256v1 -genkey -noout -out "$1.key"
			openssl req -new -key "$1.key" -subj "$2" -out "$1.csr"
			printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n%s\n' "$3" >"$1.ext"
			openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -sha256 \
				-days 3650 -extfile "$1.ext" -out "$1.crt" 2>/dev/null
			rm -f "$1.csr" "$1.ext"
		}
		leaf apiserver "/CN=kube-apiserver" "extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,DNS:localhost,IP:10.96.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
		# The git server's HTTPS endpoint, signed by the harness CA (a "private CA" for ca.crt tests).
		leaf git-https "/CN=weir-git" "extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,DNS:localhost"
		leaf admin "/O=system:masters/CN=weir-admin" "extendedKeyUsage=clientAuth"
		leaf controller-manager "/CN=system:kube-controller-manager" "extendedKeyUsage=clientAuth"
		leaf scheduler "/CN=system:kube-scheduler" "extendedKeyUsage=clientAuth"
		# Aggregation layer (requestheader) client; same CA, restricted by --requestheader-allowed-names.
		leaf front-proxy-client "/CN=front-proxy-client" "extendedKeyUsage=clientAuth"
		# Service-account token signing key pair.
		openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out sa.key 2>/dev/null
		openssl pkey -in sa.key -pubout -out sa.pub
		chmod 600 ./*.key
	) >"$STATE/pki.log" 2>&1 || die "certificate generation failed (log: $STATE/pki.log)"
}

# write_kubeconfig FILE CERTNAME
write_kubeconfig() {
	local b64="base64 -w0"
	cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: weir-e2e
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority-data: $($b64 <"$PKI/ca.crt")
users:
- name: $2
  user:
    client-certificate-data: $($b64 <"$PKI/$2.crt")
    client-key-data: $($b64 <"$PKI/$2.key")
contexts:
- name: weir-e2e
  context:
    cluster: weir-e2e
    user: $2
current-context: weir-e2e
EOF
	chmod 600 "$1"
}

# --- service configs ---------------------------------------------------------------------

write_git_config() {
	mkdir -p "$STATE/git"
	# Used by git-http-backend (via fastcgi) and by git over sshd (SetEnv).
	cat >"$STATE/gitconfig" <<EOF
[safe]
	directory = *
[http]
	receivepack = true
	uploadpack = true
EOF
}

write_nginx_config() {
	local n="$STATE/nginx" user_line=""
	mkdir -p "$n/tmp" "$STATE/charts"
	[ "$(id -u)" = 0 ] && user_line="user root;"
	htpasswd -cbm "$n/htpasswd" "$GIT_HTTP_USER" "$GIT_HTTP_PASSWORD" 2>/dev/null
	cat >"$n/git-fastcgi.conf" <<EOF
fastcgi_pass unix:$RUN/fcgiwrap.sock;
fastcgi_param SCRIPT_FILENAME /usr/lib/git-core/git-http-backend;
fastcgi_param GIT_PROJECT_ROOT $STATE/git;
fastcgi_param GIT_HTTP_EXPORT_ALL 1;
fastcgi_param GIT_CONFIG_GLOBAL $STATE/gitconfig;
fastcgi_param GIT_CONFIG_NOSYSTEM 1;
fastcgi_param HOME $STATE;
fastcgi_param PATH_INFO \$git_path;
fastcgi_param QUERY_STRING \$query_string;
fastcgi_param REQUEST_METHOD \$request_method;
fastcgi_param CONTENT_TYPE \$content_type;
fastcgi_param CONTENT_LENGTH \$content_length;
fastcgi_param REMOTE_ADDR \$remote_addr;
fastcgi_param SERVER_PROTOCOL \$server_protocol;
fastcgi_param HTTP_GIT_PROTOCOL \$http_git_protocol;
fastcgi_read_timeout 300s;
fastcgi_buffering off;
EOF
	# The git locations, served over HTTP and HTTPS.
	cat >"$n/git-locations.conf" <<EOF
    location = /healthz { return 200 "ok\n"; }
    location ~ ^/public(?<git_path>/.*)\$ {
      include $n/git-fastcgi.conf;
      fastcgi_param REMOTE_USER "";
    }
    location ~ ^/private(?<git_path>/.*)\$ {
      auth_basic "weir-git";
      auth_basic_user_file $n/htpasswd;
      include $n/git-fastcgi.conf;
      fastcgi_param REMOTE_USER \$remote_user;
    }
    location ~ ^/token(?<git_path>/.*)\$ {
      if (\$http_authorization != "Bearer $GIT_HTTP_TOKEN") {
        add_header WWW-Authenticate 'Bearer realm="weir-git"' always;
        return 401;
      }
      include $n/git-fastcgi.conf;
      fastcgi_param REMOTE_USER token;
    }
    location / { return 404; }
EOF
	cat >"$n/nginx.conf" <<EOF
daemon off;
$user_line
worker_processes 1;
pid $RUN/nginx.master.pid;
error_log $STATE/nginx.log warn;
events { worker_connections 512; }
http {
  access_log $STATE/nginx-access.log;
  client_body_temp_path $n/tmp/body;
  fastcgi_temp_path $n/tmp/fastcgi;
  proxy_temp_path $n/tmp/proxy;
  scgi_temp_path $n/tmp/scgi;
  uwsgi_temp_path $n/tmp/uwsgi;
  types {
    text/html html;
    text/plain txt;
    application/x-yaml yaml yml;
    application/gzip tgz gz;
    application/json json;
  }
  default_type application/octet-stream;
  client_max_body_size 0;
  sendfile on;

  # Git over smart HTTP (git-http-backend via fcgiwrap); repos under $STATE/git.
  server {
    listen 127.0.0.1:$GIT_HTTP_PORT;
    include $n/git-locations.conf;
  }

  # The same repositories over HTTPS, with a certificate from the harness CA.
  server {
    listen 127.0.0.1:$GIT_HTTPS_PORT ssl;
    ssl_certificate $PKI/git-https.crt;
    ssl_certificate_key $PKI/git-https.key;
    include $n/git-locations.conf;
  }

  # Helm chart repository (static files).
  server {
    listen 127.0.0.1:$CHARTS_PORT;
    root $STATE/charts;
    autoindex on;
    location = /healthz { return 200 "ok\n"; }
  }
}
EOF
}

write_sshd_config() {
	local s="$STATE/ssh" user
	user="$(id -un)"
	mkdir -p "$s"
	chmod 700 "$s"
	ssh-keygen -q -t ed25519 -N "" -C "weir-e2e-host" -f "$s/ssh_host_ed25519_key"
	ssh-keygen -q -t ed25519 -N "" -C "weir-e2e-client" -f "$s/id_ed25519"
	cp "$s/id_ed25519.pub" "$s/authorized_keys"
	echo "[127.0.0.1]:$SSH_PORT $(cut -d' ' -f1,2 "$s/ssh_host_ed25519_key.pub")" >"$s/known_hosts"
	local root_line=""
	[ "$(id -u)" = 0 ] && root_line="PermitRootLogin prohibit-password"
	cat >"$s/sshd_config" <<EOF
Port $SSH_PORT
ListenAddress 127.0.0.1
HostKey $s/ssh_host_ed25519_key
PidFile $RUN/sshd.own.pid
AuthorizedKeysFile $s/authorized_keys
StrictModes no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
$root_line
AllowUsers $user
AllowTcpForwarding no
X11Forwarding no
PrintMotd no
LogLevel VERBOSE
SetEnv GIT_CONFIG_GLOBAL=$STATE/gitconfig
EOF
}

write_registry_configs() {
	local r
	for r in registry registry-auth; do mkdir -p "$STATE/$r/data"; done
	htpasswd -cbB "$STATE/registry-auth/htpasswd" "$REGISTRY_USER" "$REGISTRY_PASSWORD" 2>/dev/null
	# registry_config DIR PORT [auth]
	registry_config() {
		cat <<EOF
version: 0.1
log:
  level: info
  formatter: text
storage:
  filesystem:
    rootdirectory: $1/data
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:$2
  secret: weir-e2e-registry-secret
  headers:
    X-Content-Type-Options: [nosniff]
EOF
		if [ "${3:-}" = auth ]; then
			cat <<EOF
auth:
  htpasswd:
    realm: weir-registry
    path: $1/htpasswd
EOF
		fi
	}
	registry_config "$STATE/registry" "$REGISTRY_PORT" >"$STATE/registry/config.yml"
	registry_config "$STATE/registry-auth" "$REGISTRY_AUTH_PORT" auth >"$STATE/registry-auth/config.yml"
}

# --- env -------------------------------------------------------------------------------

env_lines() {
	local user
	user="$(id -un)"
	local -a kv=(
		KUBECONFIG "$KUBECONFIG_FILE"
		WEIR_TOOLS_BIN "$BIN"
		WEIR_GIT_ROOT "$STATE/git"
		WEIR_GIT_HTTP_URL "http://127.0.0.1:$GIT_HTTP_PORT"
		WEIR_GIT_HTTPS_URL "https://127.0.0.1:$GIT_HTTPS_PORT"
		WEIR_GIT_HTTPS_CA "$PKI/ca.crt"
		WEIR_GIT_HTTP_USER "$GIT_HTTP_USER"
		WEIR_GIT_HTTP_PASSWORD "$GIT_HTTP_PASSWORD"
		WEIR_GIT_HTTP_TOKEN "$GIT_HTTP_TOKEN"
		WEIR_GIT_SSH_URL "ssh://$user@127.0.0.1:$SSH_PORT"
		WEIR_GIT_SSH_IDENTITY "$STATE/ssh/id_ed25519"
		WEIR_GIT_SSH_KNOWN_HOSTS "$STATE/ssh/known_hosts"
		WEIR_REGISTRY "127.0.0.1:$REGISTRY_PORT"
		WEIR_REGISTRY_AUTH "127.0.0.1:$REGISTRY_AUTH_PORT"
		WEIR_REGISTRY_USER "$REGISTRY_USER"
		WEIR_REGISTRY_PASSWORD "$REGISTRY_PASSWORD"
		WEIR_CHARTS_URL "http://127.0.0.1:$CHARTS_PORT"
		WEIR_CHARTS_DIR "$STATE/charts"
	)
	local i
	for ((i = 0; i < ${#kv[@]}; i += 2)); do
		printf 'export %s=%q\n' "${kv[i]}" "${kv[i + 1]}"
	done
}

load_ports() {
	[ -f "$STATE/ports.env" ] || return 1
	# shellcheck disable=SC1091
	. "$STATE/ports.env"
}

# --- health checks ---------------------------------------------------------------------

check_etcd() { curl_q "http://127.0.0.1:$ETCD_PORT/health" | grep -q '"health":"true"'; }
check_apiserver() {
	[ "$(curl_q --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
		"https://127.0.0.1:$APISERVER_PORT/readyz")" = ok ]
}
check_kcm() { [ "$(curl_q -k "https://127.0.0.1:$KCM_PORT/healthz")" = ok ]; }
check_scheduler() { [ "$(curl_q -k "https://127.0.0.1:$SCHEDULER_PORT/healthz")" = ok ]; }
check_node_ready() {
	[ "$(kubectl --kubeconfig "$KUBECONFIG_FILE" --request-timeout=3s get node "$NODE_NAME" \
		-o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}')" = True ]
}
check_default_sa() {
	kubectl --kubeconfig "$KUBECONFIG_FILE" --request-timeout=3s -n default get serviceaccount default
}
check_git_http() { [ "$(curl_q "http://127.0.0.1:$GIT_HTTP_PORT/healthz")" = ok ]; }
check_fcgiwrap() { [ -S "$RUN/fcgiwrap.sock" ]; }
check_charts() { curl_q -f -o /dev/null "http://127.0.0.1:$CHARTS_PORT/index.yaml"; }
check_sshd() {
	ssh -n -i "$STATE/ssh/id_ed25519" -o IdentitiesOnly=yes -o BatchMode=yes \
		-o StrictHostKeyChecking=yes -o UserKnownHostsFile="$STATE/ssh/known_hosts" \
		-o ConnectTimeout=3 -p "$SSH_PORT" "$(id -un)@127.0.0.1" true
}
http_code() { curl_q -o /dev/null -w '%{http_code}' "$1" || true; }
check_registry() { [ "$(http_code "http://127.0.0.1:$REGISTRY_PORT/v2/")" = 200 ]; }
check_registry_auth() { [ "$(http_code "http://127.0.0.1:$REGISTRY_AUTH_PORT/v2/")" = 401 ]; }

# component:check pairs, used by `status` and the "already up" test of `up`.
CHECKS=(
	etcd:check_etcd kube-apiserver:check_apiserver kube-controller-manager:check_kcm
	kube-scheduler:check_scheduler kwok:check_node_ready fcgiwrap:check_fcgiwrap
	nginx:check_git_http nginx:check_charts sshd:check_sshd registry:check_registry
	registry-auth:check_registry_auth
)

all_healthy() { # [verbose]
	local ok=0 pair comp chk pid
	load_ports 2>/dev/null || { [ -z "${1:-}" ] || echo "not up (no $STATE/ports.env)"; return 1; }
	for pair in "${CHECKS[@]}"; do
		comp="${pair%%:*}" chk="${pair#*:}"
		if pid="$(live_pid "$comp")" && "$chk" >/dev/null 2>&1; then
			[ -z "${1:-}" ] || printf '  %-24s ok    (pid %s, %s)\n' "$comp" "$pid" "$chk"
		else
			ok=1
			[ -z "${1:-}" ] || printf '  %-24s DOWN  (%s failed; log: %s)\n' "$comp" "$chk" "$STATE/$comp.log"
		fi
	done
	return $ok
}

# --- commands --------------------------------------------------------------------------

lock() {
	mkdir -p "$TOOLS_DIR"
	exec 9>"$TOOLS_DIR/.cluster.lock"
	flock -w 300 9 || die "timed out waiting for another cluster.sh (lock $TOOLS_DIR/.cluster.lock)"
}

cmd_up() {
	lock
	local t0=$SECONDS
	if [ -f "$ENV_FILE" ] && all_healthy; then
		log "already up and healthy ($STATE)"
		cat "$ENV_FILE"
		return 0
	fi
	if [ -d "$STATE" ]; then
		log "stale or unhealthy state in $STATE: cleaning it first"
		do_down
	fi
	ensure_tools
	ensure_packages
	mkdir -p "$STATE" "$RUN"
	# On failure: stop what was started, keep the logs for debugging.
	trap 'rc=$?; if [ $rc -ne 0 ]; then stop_all; echo "cluster.sh: up failed; processes stopped, logs kept in $STATE (make cluster-down removes them)" >&2; fi' EXIT

	pick_ports >"$STATE/ports.env"
	load_ports
	gen_certs
	write_kubeconfig "$KUBECONFIG_FILE" admin
	write_kubeconfig "$STATE/controller-manager.kubeconfig" controller-manager
	write_kubeconfig "$STATE/scheduler.kubeconfig" scheduler
	write_git_config
	write_nginx_config
	write_sshd_config
	write_registry_configs
	helm repo index "$STATE/charts" --url "http://127.0.0.1:$CHARTS_PORT" >/dev/null ||
		die "helm repo index failed for $STATE/charts"

	log "starting etcd, git (nginx+fcgiwrap), sshd, registries"
	mkdir -p "$STATE/etcd"
	start_bg etcd "$BIN/etcd" --name=weir-e2e --data-dir="$STATE/etcd" \
		--listen-client-urls="http://127.0.0.1:$ETCD_PORT" \
		--advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
		--listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
		--initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
		--initial-cluster="weir-e2e=http://127.0.0.1:$ETCD_PEER_PORT" \
		--unsafe-no-fsync=true --log-level=warn
	rm -f "$RUN/fcgiwrap.sock"
	start_bg fcgiwrap /usr/sbin/fcgiwrap -c 4 -s "unix:$RUN/fcgiwrap.sock"
	start_bg nginx /usr/sbin/nginx -e "$STATE/nginx.log" -p "$STATE/nginx" -c "$STATE/nginx/nginx.conf"
	mkdir -p /run/sshd 2>/dev/null || true
	start_bg sshd /usr/sbin/sshd -D -e -f "$STATE/ssh/sshd_config"
	start_bg registry /usr/bin/docker-registry serve "$STATE/registry/config.yml"
	start_bg registry-auth /usr/bin/docker-registry serve "$STATE/registry-auth/config.yml"

	wait_for etcd 30 "health" check_etcd
	local audit=()
	if [ "${WEIR_APISERVER_AUDIT:-0}" = 1 ]; then
		printf 'apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n- level: Metadata\n' \
			>"$STATE/audit-policy.yaml"
		audit=(--audit-policy-file="$STATE/audit-policy.yaml" --audit-log-path="$STATE/audit.log"
			--audit-log-format=json --audit-log-mode=blocking --audit-log-maxsize=0)
	fi
	log "starting kube-apiserver"
	# --endpoint-reconciler-type=none: the advertise address is loopback, which Endpoints
	# validation rejects (error every 10s); nothing runs in-cluster that needs to reach it.
	start_bg kube-apiserver "$BIN/kube-apiserver" \
		--etcd-servers="http://127.0.0.1:$ETCD_PORT" \
		--bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$APISERVER_PORT" \
		--tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
		--client-ca-file="$PKI/ca.crt" \
		--authorization-mode=Node,RBAC \
		--service-account-key-file="$PKI/sa.pub" \
		--service-account-signing-key-file="$PKI/sa.key" \
		--service-account-issuer=https://kubernetes.default.svc.cluster.local \
		--service-cluster-ip-range="$SERVICE_CIDR" \
		--requestheader-client-ca-file="$PKI/ca.crt" \
		--requestheader-allowed-names=front-proxy-client \
		--requestheader-username-headers=X-Remote-User \
		--requestheader-group-headers=X-Remote-Group \
		--requestheader-extra-headers-prefix=X-Remote-Extra- \
		--proxy-client-cert-file="$PKI/front-proxy-client.crt" \
		--proxy-client-key-file="$PKI/front-proxy-client.key" \
		--endpoint-reconciler-type=none \
		--allow-privileged=true \
		--profiling=false "${audit[@]}"
	wait_for kube-apiserver 90 "/readyz ok" check_apiserver

	log "starting kube-controller-manager, kube-scheduler, kwok"
	mkdir -p "$PKI/kcm" "$PKI/scheduler"
	start_bg kube-controller-manager "$BIN/kube-controller-manager" \
		--kubeconfig="$STATE/controller-manager.kubeconfig" \
		--authentication-kubeconfig="$STATE/controller-manager.kubeconfig" \
		--authorization-kubeconfig="$STATE/controller-manager.kubeconfig" \
		--bind-address=127.0.0.1 --secure-port="$KCM_PORT" --cert-dir="$PKI/kcm" \
		--service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
		--cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
		--use-service-account-credentials=true \
		--service-cluster-ip-range="$SERVICE_CIDR" \
		--flex-volume-plugin-dir="$STATE/flexvolume" \
		--leader-elect=false --profiling=false ${WEIR_KCM_QPS:+--kube-api-qps="$WEIR_KCM_QPS" --kube-api-burst="$((WEIR_KCM_QPS * 2))"}
	start_bg kube-scheduler "$BIN/kube-scheduler" \
		--kubeconfig="$STATE/scheduler.kubeconfig" \
		--authentication-kubeconfig="$STATE/scheduler.kubeconfig" \
		--authorization-kubeconfig="$STATE/scheduler.kubeconfig" \
		--bind-address=127.0.0.1 --secure-port="$SCHEDULER_PORT" --cert-dir="$PKI/scheduler" \
		--leader-elect=false --profiling=false
	start_bg kwok "$BIN/kwok" --kubeconfig="$KUBECONFIG_FILE" \
		--manage-all-nodes=false \
		--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
		--server-address="127.0.0.1:$KWOK_PORT" \
		--node-ip=127.0.0.1 --node-port="$KWOK_PORT" \
		--cidr=10.244.0.1/16 --node-lease-duration-seconds=40

	kubectl --kubeconfig "$KUBECONFIG_FILE" apply -f - >"$STATE/node.log" 2>&1 <<EOF || die "creating Node $NODE_NAME failed (log: $STATE/node.log)"
apiVersion: v1
kind: Node
metadata:
  name: $NODE_NAME
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    type: kwok
    kubernetes.io/hostname: $NODE_NAME
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    node-role.kubernetes.io/agent: ""
status:
  allocatable: {cpu: "32", memory: 256Gi, pods: "250", ephemeral-storage: 1Ti}
  capacity: {cpu: "32", memory: 256Gi, pods: "250", ephemeral-storage: 1Ti}
  nodeInfo:
    architecture: amd64
    operatingSystem: linux
    kubeletVersion: fake
    kubeProxyVersion: fake
EOF

	apply_crds

	wait_for kube-controller-manager 60 "/healthz ok" check_kcm
	wait_for kube-scheduler 60 "/healthz ok" check_scheduler
	wait_for kwok 60 "Node $NODE_NAME Ready" check_node_ready
	wait_for kube-controller-manager 60 "ServiceAccount default/default" check_default_sa
	wait_for fcgiwrap 20 "socket $RUN/fcgiwrap.sock" check_fcgiwrap
	wait_for nginx 20 "git HTTP /healthz" check_git_http
	wait_for nginx 20 "charts index.yaml" check_charts
	wait_for sshd 20 "key login" check_sshd
	wait_for registry 20 "/v2/ 200" check_registry
	wait_for registry-auth 20 "/v2/ 401" check_registry_auth

	env_lines >"$ENV_FILE.tmp" && mv "$ENV_FILE.tmp" "$ENV_FILE"
	trap - EXIT
	log "up in $((SECONDS - t0))s; state and logs in $STATE; env (also in $ENV_FILE):"
	cat "$ENV_FILE"
}

apply_crds() {
	local dir="$ROOT/crds" f files=()
	# Every CRD file; crds/kustomization.yaml only indexes them for kustomize.
	for f in "$dir"/*.yaml; do
		[ -e "$f" ] && [ "$(basename "$f")" != kustomization.yaml ] && files+=(-f "$f")
	done
	if [ "${#files[@]}" -eq 0 ]; then
		log "note: no CRD yaml in $dir yet; skipping CRD install"
		return 0
	fi
	kubectl --kubeconfig "$KUBECONFIG_FILE" apply --server-side --force-conflicts \
		--field-manager=weir-harness "${files[@]}" >"$STATE/crds.log" 2>&1 ||
		die "applying CRDs from $dir failed (log: $STATE/crds.log)"
	kubectl --kubeconfig "$KUBECONFIG_FILE" wait --for=condition=Established --timeout=60s \
		"${files[@]}" >>"$STATE/crds.log" 2>&1 ||
		die "CRDs from $dir not Established within 60s (log: $STATE/crds.log)"
	log "CRDs from $dir installed and Established"
}

do_down() {
	stop_all
	# Anything still in a session we started means a leak; report it.
	rm -rf "$STATE"
}

cmd_down() {
	lock
	if [ ! -d "$STATE" ]; then
		log "not up (no $STATE)"
		return 0
	fi
	do_down
	log "down: processes stopped, $STATE removed"
}

cmd_env() {
	[ -f "$ENV_FILE" ] || die "cluster is not up (no $ENV_FILE); run: make cluster-up"
	cat "$ENV_FILE"
}

cmd_status() {
	if all_healthy verbose; then
		echo "all components up ($STATE)"
	else
		echo "some components are down ($STATE)"
		return 1
	fi
}

main() {
	case "${1:-}" in
	up) cmd_up ;;
	down) cmd_down ;;
	env) cmd_env ;;
	status) cmd_status ;;
	*)
		echo "usage: $0 up|down|env|status" >&2
		exit 2
		;;
	esac
}

# Run only when executed (sourcing gives the functions, for debugging).
if [ "${BASH_SOURCE[0]}" = "$0" ]; then main "$@"; fi
