#!/usr/bin/env bash
# Make the local services the test suite uses available, as far as this machine allows:
#   - Debian's `prometheus` binary (tests start their own instance on a free port);
#   - Debian's `victoria-metrics` binary (the freshness tests start their own instances);
#   - PostgreSQL on 127.0.0.1:5432 and Mosquitto on 127.0.0.1:1883, started when stopped.
# Never fails: whatever cannot be provided is reported, and the tests that need it skip with a reason.
set -uo pipefail

say() { printf 'ensure-services: %s\n' "$*"; }
warn() { printf 'ensure-services: WARNING: %s\n' "$*" >&2; }

# Run a command as root: directly when root, through non-interactive sudo when available.
as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo -n "$@"
    else
        return 126
    fi
}

tcp_open() {  # host port
    timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null
}

wait_for() {  # seconds description command...
    local seconds=$1 what=$2
    shift 2
    local deadline=$((SECONDS + seconds))
    until "$@"; do
        if ((SECONDS >= deadline)); then
            warn "$what did not come up within ${seconds}s"
            return 1
        fi
        sleep 0.5
    done
}

ensure_prometheus() {
    if command -v prometheus >/dev/null 2>&1; then
        say "prometheus: $(command -v prometheus)"
        return 0
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        warn "prometheus is not installed and apt-get is not available: Prometheus tests will skip"
        return 0
    fi
    say "prometheus: not installed, installing Debian's package"
    if as_root apt-get update -q && as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends prometheus </dev/null; then
        say "prometheus: installed at $(command -v prometheus || echo '?')"
    else
        warn "could not install prometheus (no root, no sudo, or no network): Prometheus tests will skip"
    fi
    return 0
}

ensure_chromium() {
    if command -v chromium >/dev/null 2>&1; then
        say "chromium: $(command -v chromium)"
        return 0
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        warn "chromium is not installed and apt-get is not available: the status page's browser tests will skip"
        return 0
    fi
    say "chromium: not installed, installing Debian's package"
    if as_root apt-get update -q && as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends chromium </dev/null; then
        say "chromium: installed at $(command -v chromium || echo '?')"
    else
        warn "could not install chromium (no root, no sudo, or no network): the status page's browser tests will skip"
    fi
    return 0
}

ensure_victoria_metrics() {
    if command -v victoria-metrics >/dev/null 2>&1; then
        say "victoria-metrics: $(command -v victoria-metrics)"
        return 0
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        warn "victoria-metrics is not installed and apt-get is not available: VictoriaMetrics tests will skip"
        return 0
    fi
    say "victoria-metrics: not installed, installing Debian's package"
    # The package's service is not wanted (tests start their own servers); where services may not
    # start (a container's policy-rc.d), installing still succeeds.
    if as_root apt-get update -q && as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends victoria-metrics </dev/null; then
        say "victoria-metrics: installed at $(command -v victoria-metrics || echo '?')"
    else
        warn "could not install victoria-metrics (no root, no sudo, or no network): VictoriaMetrics tests will skip"
    fi
    return 0
}

ensure_postgresql() {
    if ! command -v pg_isready >/dev/null 2>&1; then
        warn "PostgreSQL client tools are not installed: PostgreSQL tests will skip"
        return 0
    fi
    if pg_isready -q -h 127.0.0.1 -p 5432; then
        say "postgresql: accepting connections on 127.0.0.1:5432"
        return 0
    fi
    if ! command -v pg_ctlcluster >/dev/null 2>&1 || [[ ! -d /etc/postgresql ]]; then
        warn "PostgreSQL is not running and no local cluster is configured: PostgreSQL tests will skip"
        return 0
    fi
    local version started=0
    for version in $(ls /etc/postgresql); do
        [[ -d /etc/postgresql/$version/main ]] || continue
        say "postgresql: starting cluster $version/main"
        if as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start; then
            started=1
        else
            warn "could not start PostgreSQL cluster $version/main"
        fi
    done
    if ((started)) && wait_for 30 "PostgreSQL" pg_isready -q -h 127.0.0.1 -p 5432; then
        say "postgresql: accepting connections on 127.0.0.1:5432"
    else
        warn "PostgreSQL is not available: PostgreSQL tests will skip"
    fi
    return 0
}

ensure_mosquitto() {
    if tcp_open 127.0.0.1 1883; then
        say "mosquitto: listening on 127.0.0.1:1883"
        return 0
    fi
    if ! command -v mosquitto >/dev/null 2>&1; then
        warn "Mosquitto is not installed: MQTT tests will skip"
        return 0
    fi
    local args=(-d)
    [[ -r /etc/mosquitto/mosquitto.conf ]] && args+=(-c /etc/mosquitto/mosquitto.conf)
    say "mosquitto: starting (mosquitto ${args[*]})"
    if ! as_root mosquitto "${args[@]}" && ! mosquitto "${args[@]}"; then
        warn "could not start Mosquitto"
    fi
    if wait_for 15 "Mosquitto" tcp_open 127.0.0.1 1883; then
        say "mosquitto: listening on 127.0.0.1:1883"
    else
        warn "Mosquitto is not available: MQTT tests will skip"
    fi
    return 0
}

ensure_prometheus
ensure_victoria_metrics
ensure_chromium
ensure_postgresql
ensure_mosquitto
exit 0
