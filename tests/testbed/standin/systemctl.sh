#!/bin/sh
# k3stack test bed: a `systemctl` for hosts where systemd cannot run (see standin/__init__.py).
# Units are /etc/systemd/system/<unit>.service; `start` runs ExecStart in the background in its
# own session (output to /var/log/<unit>.log, environment from EnvironmentFile=), its PID in
# /run/standin/<unit>.pid; `stop` ends that whole process group. Every start/stop/restart
# appends "<action> <unit>" to /var/log/standin-systemctl.log.
UNIT_DIR=/etc/systemd/system
RUN_DIR=/run/standin
ACTIONS=/var/log/standin-systemctl.log
WANTS=$UNIT_DIR/multi-user.target.wants

quiet=
now=
action=
units=
for arg in "$@"; do
    case "$arg" in
        -q|--quiet) quiet=1 ;;
        --now) now=1 ;;
        -*) ;;
        *) if [ -z "$action" ]; then action=$arg; else units="$units $arg"; fi ;;
    esac
done

name() { n=$(basename "$1"); echo "${n%.service}"; }
pidfile() { echo "$RUN_DIR/$1.pid"; }
running() { f=$(pidfile "$1"); [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null; }
say() { [ -n "$quiet" ] || echo "$@"; }
need_unit() { [ -f "$UNIT_DIR/$1.service" ] || { echo "Failed to $action $1.service: Unit $1.service not found." >&2; exit 5; }; }

unit_start() {
    u=$1
    need_unit "$u"
    running "$u" && return 0
    mkdir -p "$RUN_DIR"
    # ExecStart= may continue over backslash-newlines, as the real installer writes it.
    exec_start=$(sed -n '/^ExecStart=/,/[^\\]$/p' "$UNIT_DIR/$u.service" | sed 's/^ExecStart=//; s/\\$//' | tr '\n' ' ')
    env_files=$(sed -n 's/^EnvironmentFile=-\{0,1\}//p' "$UNIT_DIR/$u.service" | sed "s/%N/$u/g")
    (
        set -a
        for f in $env_files; do [ -r "$f" ] && . "$f"; done
        set +a
        eval "exec setsid $exec_start"
    ) >>"/var/log/$u.log" 2>&1 </dev/null &
    echo $! >"$(pidfile "$u")"
}

unit_stop() {
    u=$1
    f=$(pidfile "$u")
    [ -f "$f" ] || return 0
    pid=$(cat "$f")
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
    i=0
    while kill -0 -- "-$pid" 2>/dev/null || kill -0 "$pid" 2>/dev/null; do
        i=$((i + 1))
        if [ $i -ge 300 ]; then kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null; fi
        [ $i -ge 400 ] && break
        sleep 0.05
    done
    rm -f "$f"
}

record() { mkdir -p "$(dirname "$ACTIONS")"; echo "$1 $2" >>"$ACTIONS"; }

status=0
case "$action" in
    daemon-reload|reset-failed) exit 0 ;;
    enable|disable|start|stop|restart|is-active|is-enabled|status) ;;
    *) echo "standin systemctl: unsupported command '$action'" >&2; exit 1 ;;
esac
for arg in $units; do
    u=$(name "$arg")
    case "$action" in
        enable) need_unit "$u"; mkdir -p "$WANTS"; ln -sf "$UNIT_DIR/$u.service" "$WANTS/$u.service"
            say "Created symlink $WANTS/$u.service → $UNIT_DIR/$u.service."
            if [ -n "$now" ]; then record start "$u"; unit_start "$u"; fi ;;
        disable) if [ -L "$WANTS/$u.service" ]; then rm -f "$WANTS/$u.service"; say "Removed \"$WANTS/$u.service\"."; fi
            if [ -n "$now" ]; then record stop "$u"; unit_stop "$u"; fi ;;
        start) record start "$u"; unit_start "$u" ;;
        stop) record stop "$u"; unit_stop "$u" ;;
        restart) record restart "$u"; need_unit "$u"; unit_stop "$u"; unit_start "$u" ;;
        is-active|status)
            if running "$u"; then say active
            elif [ -f "$(pidfile "$u")" ]; then say failed; status=3
            else say inactive; status=3; fi ;;
        is-enabled)
            if [ -L "$WANTS/$u.service" ]; then say enabled
            elif [ -f "$UNIT_DIR/$u.service" ]; then say disabled; status=1
            else say "Failed to get unit file state for $u.service: No such file or directory" >&2; status=1; fi ;;
    esac
done
exit $status
