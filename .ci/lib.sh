# Shell functions for `.ci/test` and `bench/run` (sourced, not run).

as_root() { [ "$(id -u)" = 0 ]; }

apt_install() {
    if as_root && command -v apt-get >/dev/null; then
        echo "$(basename "$0"): installing $* with apt-get" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null \
            || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null; }
    else
        echo "$(basename "$0"): $* missing, and apt-get cannot install it here (not root)" >&2
        return 1
    fi
}

# PostgreSQL's server binaries: where pg_config says, else Debian's versioned directory.
pg_bindir() {
    local dir
    dir=$(pg_config --bindir 2>/dev/null || true)
    if [ -n "$dir" ] && [ -x "$dir/initdb" ]; then echo "$dir"; return; fi
    for dir in /usr/lib/postgresql/*/bin; do
        if [ -x "$dir/initdb" ]; then echo "$dir"; return; fi
    done
}

# Starts a throwaway PostgreSQL server (Debian's, as a non-root user, on a free loopback
# port) and exports where it is: E2E_DATABASE_URL, E2E_PG_BINDIR, E2E_PG_DATA,
# E2E_PG_USER, E2E_PG_PORT. The server is stopped and its directory removed when the
# calling shell exits, whatever happens.
start_postgres() {
    bindir=$(pg_bindir)
    if [ -z "$bindir" ]; then
        apt_install postgresql
        bindir=$(pg_bindir)
    fi
    [ -n "$bindir" ] || { echo "$(basename "$0"): no PostgreSQL server binaries (initdb) found" >&2; exit 1; }

    # PostgreSQL refuses to run as root: as root, run it as the postgres user.
    pg_user=$(id -un)
    if as_root; then pg_user=postgres; fi
    as_pg() { if as_root; then runuser -u "$pg_user" -- "$@"; else "$@"; fi; }

    pg_dir=$(mktemp -d /tmp/host-tests-pg.XXXXXX)
    chmod 700 "$pg_dir"
    if as_root; then chown "$pg_user" "$pg_dir"; fi
    stop_pg() {
        as_pg "$bindir/pg_ctl" -D "$pg_dir/data" -m immediate stop >/dev/null 2>&1 || true
        rm -rf "$pg_dir"
    }
    trap stop_pg EXIT

    # A free loopback port: bind port 0 and read what the kernel gave.
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    as_pg "$bindir/initdb" -D "$pg_dir/data" -A trust -U postgres -E UTF8 --no-locale >/dev/null
    # Tests only: no fsync (a throwaway server), room for several hosts' pools at once.
    as_pg "$bindir/pg_ctl" -D "$pg_dir/data" -w -l "$pg_dir/server.log" \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $pg_dir -c max_connections=400 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
        start >/dev/null
    echo "$(basename "$0"): PostgreSQL $("$bindir/postgres" --version | awk '{print $3}') on 127.0.0.1:$port (data in $pg_dir)" >&2

    # The tests read where the server is and how to stop and start it (the outage test).
    export E2E_DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
    export E2E_PG_BINDIR="$bindir"
    export E2E_PG_DATA="$pg_dir/data"
    export E2E_PG_USER="$pg_user"
    export E2E_PG_PORT="$port"
}
