#!/usr/bin/env bash
# Make sure RabbitMQ, PostgreSQL and Redis answer on 127.0.0.1; start any that do not.
# The start commands are the ones this machine kind uses to start them before a session.
set -euo pipefail

wait_for() { # name, check command...
    local name=$1; shift
    for _ in $(seq 1 60); do
        if "$@" >/dev/null 2>&1; then echo "services: $name is up"; return 0; fi
        sleep 1
    done
    echo "services: $name did not come up within 60 s" >&2
    return 1
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if ! port_open 5672; then
    echo "services: RabbitMQ not answering; starting it"
    rabbitmq-server -detached || true
fi
wait_for RabbitMQ port_open 5672

# An open port is not enough: a broker whose virtual-host operations hang (seen after
# interrupted vhost deletions) fails every integration test. Probe one; if it hangs,
# restart the broker, and as a last resort start it on fresh data (it holds only tests').
rabbit_usable() {
    local probe="ci-probe-$$"
    timeout 60 rabbitmqctl -q add_vhost "$probe" >/dev/null 2>&1 &&
        timeout 60 rabbitmqctl -q delete_vhost "$probe" >/dev/null 2>&1
}
restart_rabbit() {
    pkill -f rabbitmqctl || true
    timeout 60 rabbitmqctl stop >/dev/null 2>&1 || pkill -9 -u rabbitmq beam.smp || true
    sleep 2
    if [ "${1:-}" = fresh ]; then
        rm -rf /var/lib/rabbitmq/mnesia/*
    fi
    rabbitmq-server -detached || true
    wait_for RabbitMQ port_open 5672
    timeout 120 rabbitmq-diagnostics -q check_running >/dev/null 2>&1 || sleep 10
}
if ! rabbit_usable; then
    echo "services: RabbitMQ answers but cannot manage virtual hosts; restarting it"
    restart_rabbit
    if ! rabbit_usable; then
        echo "services: still unusable; restarting RabbitMQ on fresh data"
        restart_rabbit fresh
        rabbit_usable || { echo "services: RabbitMQ is not usable" >&2; exit 1; }
    fi
fi
echo "services: RabbitMQ manages virtual hosts"

if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    echo "services: PostgreSQL not answering; starting it"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start || true
fi
wait_for PostgreSQL pg_isready -q -h 127.0.0.1 -p 5432

if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    echo "services: Redis not answering; starting it"
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
        --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
fi
wait_for Redis redis-cli -h 127.0.0.1 -p 6379 ping
