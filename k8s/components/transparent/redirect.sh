#!/bin/sh
# Softprobe transparent capture: redirect a pod's outbound TCP to the gateway with iptables.
#
#   redirect.sh install   (the init container runs this)     redirect.sh remove
#
# Runs in the pod's network namespace with CAP_NET_ADMIN. Only connections from OTHER users than
# the gateway's are redirected (the gateway's own upstream calls must not come back into it), only
# to the listed destination ports, never to loopback, and never DNS. IPv4 only: IPv6 connections
# are left alone (not captured, never broken), as the gateway listens on 127.0.0.1.
#
# Environment (defaults in brackets):
#   PROXY_PORT      the gateway's `--mode transparent@PORT` listener [18080]
#   GATEWAY_UID     the gateway container's runAsUser, exempt from the redirect [10001]
#   REDIRECT_PORTS  destination ports to capture, space separated [80 443]
#   EXCLUDE_CIDRS   destinations never redirected, space separated []
#                   $KUBERNETES_SERVICE_HOST (the API server) is always excluded.
set -eu

CHAIN=SOFTPROBE_OUTPUT
PROXY_PORT=${PROXY_PORT:-18080}
GATEWAY_UID=${GATEWAY_UID:-10001}
REDIRECT_PORTS=${REDIRECT_PORTS:-80 443}
EXCLUDE_CIDRS="${EXCLUDE_CIDRS:-} ${KUBERNETES_SERVICE_HOST:-}"

fail() { echo "redirect.sh: $*" >&2; exit 2; }

number() {  # number NAME VALUE MIN MAX
    case $2 in '' | *[!0-9]*) fail "$1 must be a number, got '$2'" ;; esac
    [ "$2" -ge "$3" ] && [ "$2" -le "$4" ] || fail "$1 must be between $3 and $4, got $2"
}

check() {
    number PROXY_PORT "$PROXY_PORT" 1 65535
    number GATEWAY_UID "$GATEWAY_UID" 1 4294967294  # 0 would exempt every root process
    [ -n "$(echo "$REDIRECT_PORTS" | tr -d ' ')" ] || fail "REDIRECT_PORTS is empty"
    for port in $REDIRECT_PORTS; do
        number REDIRECT_PORTS "$port" 1 65535
        [ "$port" != 53 ] || fail "REDIRECT_PORTS must not include 53: DNS stays untouched"
        [ "$port" != "$PROXY_PORT" ] || fail "REDIRECT_PORTS must not include PROXY_PORT $PROXY_PORT"
    done
}

remove() {
    while iptables -t nat -D OUTPUT -p tcp -j "$CHAIN" 2>/dev/null; do :; done
    if iptables -t nat -S "$CHAIN" >/dev/null 2>&1; then
        iptables -t nat -F "$CHAIN"
        iptables -t nat -X "$CHAIN"
    fi
}

install() {
    iptables -t nat -N "$CHAIN"
    iptables -t nat -A "$CHAIN" -m owner --uid-owner "$GATEWAY_UID" -j RETURN
    iptables -t nat -A "$CHAIN" -o lo -j RETURN
    iptables -t nat -A "$CHAIN" -d 127.0.0.0/8 -j RETURN
    for cidr in $EXCLUDE_CIDRS; do
        case $cidr in *:*) continue ;; esac  # IPv6 is never redirected
        iptables -t nat -A "$CHAIN" -d "$cidr" -j RETURN
    done
    for port in $REDIRECT_PORTS; do
        iptables -t nat -A "$CHAIN" -p tcp --dport "$port" -j REDIRECT --to-ports "$PROXY_PORT"
    done
    iptables -t nat -A OUTPUT -p tcp -j "$CHAIN"
}

case ${1:-} in
    install) check; remove; install; echo "redirect.sh: outbound TCP ports $REDIRECT_PORTS -> :$PROXY_PORT (uid $GATEWAY_UID exempt)" ;;
    remove) remove; echo "redirect.sh: redirect removed" ;;
    *) fail "usage: redirect.sh install|remove" ;;
esac
