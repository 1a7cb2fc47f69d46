# Sourced by tests/run and admin/quickstart: installs the Debian packages
# pgmta needs to build, run and test, when some are missing. No-op otherwise.
# With --tests it adds what only the test suite needs (a browser and
# ChromeDriver for the dashboard tests, libfaketime for the clock-step test,
# systemd-analyze for the unit file test, file for cpack's dpkg-shlibdeps in
# the package test, pg_auto_failover and PgBouncer for the failover test,
# Prometheus's text parser for the metrics test, unbound, nsd and ldnsutils
# for the DANE test), which admin/quickstart does
# not install.
pgmta_install_deps() {
    local packages=(build-essential cmake pkg-config libevent-dev libc-ares-dev libconfig-dev
                    libpq-dev libssl-dev zlib1g-dev libcmocka-dev postgresql-15 postgresql-client-15
                    postfix dnsmasq-base swaks python3 python3-psycopg2 openssl procps
                    iproute2 util-linux clang-format python3-dkim libcrypt-dev)
    [ "${1:-}" = --tests ] && packages+=(chromium chromium-driver faketime systemd file
                                          postgresql-15-auto-failover pgbouncer
                                          python3-prometheus-client unbound nsd ldnsutils)
    local missing=() p
    for p in "${packages[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
            missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "installing ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -q
    # postfix is wanted for smtp-sink and smtp-source only: leave it unconfigured.
    echo "postfix postfix/main_mailer_type select No configuration" | $sudo debconf-set-selections
    $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
}
