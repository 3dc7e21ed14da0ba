#!/usr/bin/env bash
# flash.sh: provision a meter-agent board in one command (docs/technician.md).
#
#   ./flash.sh --board NAME --gateway-id ID --broker HOST[:PORT]
#              (--host USER@HOST | --rootfs DIR) [--dry-run]
#              [--command-key FILE --token-key FILE] [--web-password FILE]
#              [--wheel FILE] [--wheelhouse DIR] [--bootfs DIR]
#
# --rootfs DIR  a board's root filesystem (an SD card mounted on this machine), or /
#               on the board itself. On a card, the venv is built at first boot by
#               meter-agent-setup.service (a venv made here would not run there).
# --host U@H    the same, on a running board over ssh (FLASH_SSH_OPTS adds options).
#
# Idempotent: each step says created / updated / unchanged; a second run changes
# nothing. Existing keys are kept; /var/lib/meter-agent (the agent's state) is never
# touched. --dry-run changes nothing and prints every step.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PY=${PYTHON:-python3}
HELPER=("$PY" "$HERE/deploy/flash_helper.py")
ID_RE='^[A-Za-z0-9_-]{1,64}$'

usage() { sed -n '2,16s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }
die() { echo "flash.sh: $*" >&2; exit 2; }

BOARD="" GATEWAY="" BROKER="" HOST="" ROOTFS="" DRY=0 CMD_KEY="" TOKEN_KEY="" WEB_PW=""
WHEEL="" WHEELHOUSE="" BOOTFS=""
while [ $# -gt 0 ]; do
  opt=$1
  case $opt in
    -h|--help) usage; exit 0 ;;
    --dry-run) DRY=1; shift; continue ;;
    --*=*) set -- "${opt%%=*}" "${opt#*=}" "${@:2}"; continue ;;
  esac
  [ $# -ge 2 ] || die "$opt needs a value (see --help)"
  case $opt in
    --board) BOARD=$2 ;;
    --gateway-id) GATEWAY=$2 ;;
    --broker) BROKER=$2 ;;
    --host) HOST=$2 ;;
    --rootfs) ROOTFS=$2 ;;
    --command-key) CMD_KEY=$2 ;;
    --token-key) TOKEN_KEY=$2 ;;
    --web-password) WEB_PW=$2 ;;
    --wheel) WHEEL=$2 ;;
    --wheelhouse) WHEELHOUSE=$2 ;;
    --bootfs) BOOTFS=$2 ;;
    *) die "unknown option $opt (see --help)" ;;
  esac
  shift 2
done

# -- inputs, all checked before anything is touched ----------------------------------
[ -n "$BOARD" ] || die "--board NAME is required (one of: $(cd "$HERE/board_configs" && ls ./*.toml | sed 's|^\./||; s|\.toml$||' | tr '\n' ' '))"
[ -n "$GATEWAY" ] || die "--gateway-id ID is required"
[ -n "$BROKER" ] || die "--broker HOST[:PORT] is required"
[[ $GATEWAY =~ $ID_RE ]] || die "--gateway-id: must match [A-Za-z0-9_-]{1,64}"
{ [ -n "$HOST" ] && [ -z "$ROOTFS" ]; } || { [ -z "$HOST" ] && [ -n "$ROOTFS" ]; } \
  || die "give exactly one of --host USER@HOST or --rootfs DIR"
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
  || die "needs Python 3.11+ as $PY (set PYTHON=...)"

if [ -f "$BOARD" ]; then BOARD_FILE=$BOARD; else BOARD_FILE=$HERE/board_configs/$BOARD.toml; fi
[ -f "$BOARD_FILE" ] || die "--board: no $BOARD_FILE"
BOARD_NAME=$(basename "$BOARD_FILE" .toml)
[[ $BOARD_NAME =~ ^[A-Za-z0-9._-]+$ ]] || die "--board: name must be [A-Za-z0-9._-]"
case $BOARD_NAME in *hat*) UDEV_KIND=hat ;; *) UDEV_KIND=usb ;; esac

if [[ $BROKER =~ ^\[([0-9A-Fa-f:.]+)\](:([0-9]+))?$ ]]; then
  MQTT_HOST=${BASH_REMATCH[1]} MQTT_PORT=${BASH_REMATCH[3]:-1883}
elif [[ $BROKER =~ ^([A-Za-z0-9._-]+)(:([0-9]+))?$ ]]; then
  MQTT_HOST=${BASH_REMATCH[1]} MQTT_PORT=${BASH_REMATCH[3]:-1883}
else
  die "--broker: expected HOST[:PORT] or [IPv6]:PORT, got '$BROKER'"
fi
{ [ "$MQTT_PORT" -ge 1 ] && [ "$MQTT_PORT" -le 65535 ]; } || die "--broker: port must be 1..65535"

for pair in "command-key:$CMD_KEY" "token-key:$TOKEN_KEY"; do
  file=${pair#*:}
  [ -z "$file" ] || "${HELPER[@]}" key-check "$file" >/dev/null || die "--${pair%%:*}: see above"
done
[ -z "$WEB_PW" ] || [ -s "$WEB_PW" ] || die "--web-password: $WEB_PW is missing or empty"
[ -z "$WHEEL" ] || { [ -f "$WHEEL" ] && "${HELPER[@]}" wheel-id "$WHEEL" >/dev/null; } \
  || die "--wheel: $WHEEL is not a wheel"
[ -z "$WHEELHOUSE" ] || [ -d "$WHEELHOUSE" ] || die "--wheelhouse: no directory $WHEELHOUSE"

LIVE=0 R=""
if [ -n "$ROOTFS" ]; then
  [ -d "$ROOTFS" ] || die "--rootfs: no directory $ROOTFS"
  R=$(cd "$ROOTFS" && pwd -P)
  if [ "$R" = / ]; then
    LIVE=1 R=""
    [ "$(id -u)" = 0 ] || [ "$DRY" = 1 ] || die "--rootfs / changes this machine: run as root"
  fi
fi

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
CHANGED=0 UNCHANGED=0 UNITS_CHANGED=0 UDEV_CHANGED=0
FINGERPRINTS=()

report() {  # STATUS WHAT [DETAIL]
  printf '  %-13s %s%s\n' "$1" "$2" "${3:+  ($3)}"
  case $1 in
    unchanged|skipped) UNCHANGED=$((UNCHANGED + 1)) ;;
    "would check") ;;
    *) CHANGED=$((CHANGED + 1)) ;;
  esac
}

# put_file SRC DEST MODE [DETAIL]: DEST is a path on the target; replaced atomically,
# only when content or mode differ. Returns 0 when it changed (or would change).
put_file() {
  local src=$1 dest=$2 mode=$3 detail=${4:-} t=$R$2 status
  if [ -f "$t" ] && [ ! -L "$t" ] && cmp -s "$src" "$t" && [ "$(stat -c %a "$t")" = "${mode#0}" ]; then
    report unchanged "$dest" "$detail"; return 1
  fi
  if [ -e "$t" ] || [ -L "$t" ]; then status=update; else status=create; fi
  if [ "$DRY" = 1 ]; then report "would $status" "$dest" "$detail"; return 0; fi
  mkdir -p "$(dirname "$t")"
  cp "$src" "$t.flash-new"
  chmod "$mode" "$t.flash-new"
  mv -f "$t.flash-new" "$t"
  report "${status}d" "$dest" "$detail"
}

put_link() {  # DEST TARGET
  local t=$R$1
  if [ -L "$t" ] && [ "$(readlink "$t")" = "$2" ]; then report unchanged "$1 -> $2"; return 1; fi
  if [ "$DRY" = 1 ]; then report "would create" "$1 -> $2"; return 0; fi
  mkdir -p "$(dirname "$t")"
  ln -sfn "$2" "$t"
  report created "$1 -> $2"
}

put_dir() {  # DEST MODE
  local t=$R$1
  if [ -d "$t" ] && [ "$(stat -c %a "$t")" = "${2#0}" ]; then report unchanged "$1/"; return 1; fi
  if [ "$DRY" = 1 ]; then report "would create" "$1/" "mode $2"; return 0; fi
  mkdir -p "$t"
  chmod "$2" "$t"
  report created "$1/" "mode $2"
}

# key_step NAME GIVEN DEST: a given key is installed; else an existing one is kept;
# else a new one is made on the target (32 random bytes, hex, 0600, never overwritten).
key_step() {
  local name=$1 given=$2 dest=$3 t=$R$3 fp
  if [ -n "$given" ]; then
    fp=$("${HELPER[@]}" key-fingerprint "$given")
    if [ -f "$t" ] && ! cmp -s "$given" "$t"; then
      echo "  WARNING: $dest is replaced by $given: the head-end must hold the new key" >&2
    fi
    put_file "$given" "$dest" 0600 "given, fingerprint $fp" || true
  elif [ -f "$t" ]; then
    fp=$("${HELPER[@]}" key-fingerprint "$t")
    if [ "$(stat -c %a "$t")" = 600 ]; then
      report unchanged "$dest" "kept, fingerprint $fp"
    else
      [ "$DRY" = 1 ] && report "would update" "$dest" "mode 0600" \
        || { chmod 600 "$t"; report updated "$dest" "mode 0600, fingerprint $fp"; }
    fi
  elif [ "$DRY" = 1 ]; then
    fp="(made when run for real)"
    report "would create" "$dest" "new random key"
  else
    fp=$("${HELPER[@]}" key-new "$t")
    report created "$dest" "new random key, fingerprint $fp"
  fi
  FINGERPRINTS+=("$(printf '  %-12s %s  %s' "$name" "$fp" "$dest")")
}

build_wheel() {  # -> path of the wheel on stdout
  local src=$WORK/src out=$WORK/wheel bpy=$PY
  [ -x "$HERE/.venv/bin/python" ] && bpy=$HERE/.venv/bin/python
  mkdir -p "$src" "$out"
  # A clean copy: setuptools' build/ dir in a checkout can carry deleted modules along.
  # The simulator (sim/) is for developers and the demo: a board gets the agent alone.
  (cd "$HERE" && tar --exclude=__pycache__ -cf - pyproject.toml README.md agent) \
    | tar -xf - -C "$src"
  if ! "$bpy" -m pip wheel -q --no-deps --disable-pip-version-check "$src" -w "$out" \
       >"$WORK/wheel.log" 2>&1; then
    cat "$WORK/wheel.log" >&2
    die "building the wheel failed (log above)"
  fi
  ls "$out"/meter_agent-*.whl
}

# -- 1. what will run, and a config that passes check-config -------------------------
if [ -n "$HOST" ]; then where="host $HOST (over ssh)"
elif [ "$LIVE" = 1 ]; then where="this machine (/)"
else where="rootfs $R"; fi
echo "meter-agent flash: board $BOARD_NAME, gateway $GATEWAY, broker $MQTT_HOST:$MQTT_PORT"
echo "  target: $where$([ "$DRY" = 1 ] && echo '; dry run: nothing is changed')"

echo "[check]"
FLAGS=$("${HELPER[@]}" render-config "$BOARD_FILE" "$WORK/agent.toml" \
  --gateway-id "$GATEWAY" --mqtt-host "$MQTT_HOST" --mqtt-port "$MQTT_PORT") || exit 2
# Checked before the build (a bad config fails in a second): with the given wheel, or
# with this checkout, which is what the wheel is built from.
if ! PYTHONPATH=${WHEEL:-$HERE} "$PY" -m agent.cli check-config "$WORK/agent.toml" \
     >"$WORK/check.out" 2>&1; then
  sed 's/^/  /' "$WORK/check.out" >&2
  die "the config made from $BOARD_FILE fails check-config (above); nothing was changed"
fi
echo "  check-config  ok  ($BOARD_NAME.toml + gateway.id, mqtt.host/port, data_dir, key paths)"
case $FLAGS in *tls*) echo "  note          port $MQTT_PORT is MQTT over TLS: mqtt.tls = true (system CA store)" ;; esac

echo "[wheel]"
if [ -n "$WHEEL" ]; then
  cp "$WHEEL" "$WORK/"; WHEEL=$WORK/$(basename "$WHEEL")
  echo "  given         $(basename "$WHEEL")  (content $("${HELPER[@]}" wheel-id "$WHEEL"))"
elif [ "$DRY" = 1 ]; then
  echo "  would build   meter_agent wheel from $HERE (python -m pip wheel --no-deps)"
else
  WHEEL=$(build_wheel)
  echo "  built         $(basename "$WHEEL")  (content $("${HELPER[@]}" wheel-id "$WHEEL"))"
fi

# -- 2. --host: the same script runs on the board, as root, on its own / -------------
if [ -n "$HOST" ]; then
  B=$WORK/bundle
  mkdir -p "$B/deploy" "$B/docs" "$B/board_configs" "$B/keys"
  cp "$HERE/flash.sh" "$B/"
  find "$HERE/deploy" -maxdepth 1 -type f ! -name '*.pyc' -exec cp {} "$B/deploy/" \;
  cp "$HERE/docs/technician.md" "$B/docs/"
  cp "$BOARD_FILE" "$B/board_configs/$BOARD_NAME.toml"
  remote_args=(--rootfs / --board "board_configs/$BOARD_NAME.toml" --gateway-id "$GATEWAY"
               --broker "$BROKER")
  if [ -n "$WHEEL" ]; then cp "$WHEEL" "$B/"; remote_args+=(--wheel "$(basename "$WHEEL")"); fi
  if [ -n "$CMD_KEY" ]; then install -m 600 "$CMD_KEY" "$B/keys/command.key"; remote_args+=(--command-key keys/command.key); fi
  if [ -n "$TOKEN_KEY" ]; then install -m 600 "$TOKEN_KEY" "$B/keys/token.key"; remote_args+=(--token-key keys/token.key); fi
  if [ -n "$WEB_PW" ]; then install -m 600 "$WEB_PW" "$B/keys/web.password"; remote_args+=(--web-password keys/web.password); fi
  if [ -n "$WHEELHOUSE" ]; then mkdir -p "$B/wheelhouse"; cp "$WHEELHOUSE"/*.whl "$B/wheelhouse/"; remote_args+=(--wheelhouse wheelhouse); fi
  sudo="sudo"; [ "${HOST%%@*}" = root ] && sudo=""
  bundle=/tmp/meter-agent-flash.$$.tgz
  args_q=$(printf '%q ' "${remote_args[@]}")  # quoted for the remote shell ([v6] is a glob)
  remote="set -e; d=\$(mktemp -d); trap 'rm -rf \"\$d\" $bundle' EXIT; tar -xzf $bundle -C \"\$d\"; cd \"\$d\"; $sudo bash ./flash.sh $args_q"
  read -r -a ssh_opts <<< "${FLASH_SSH_OPTS:-}"
  echo "[remote]"
  if [ "$DRY" = 1 ]; then
    echo "  would copy    $(find "$B" -type f | wc -l) files (flash.sh, deploy/, docs/, the board config, given keys; and the wheel) to $HOST:$bundle"
    echo "  would run     on $HOST, in a temp dir holding the bundle (removed after):"
    echo "                $sudo bash ./flash.sh $args_q"
    exit 0
  fi
  (cd "$B" && umask 077 && tar -czf "$WORK/bundle.tgz" .)
  # Two connections: one copies the bundle (stdin), one runs it with a terminal for sudo.
  ssh "${ssh_opts[@]}" "$HOST" "umask 077; cat > $bundle" < "$WORK/bundle.tgz"
  ssh -t "${ssh_opts[@]}" "$HOST" "$remote"
  exit $?
fi

# -- 3. files on the target -----------------------------------------------------------
echo "[files]"
if [ -n "$WHEEL" ]; then
  wid=$("${HELPER[@]}" wheel-id "$WHEEL")
  dest=/opt/meter-agent/wheels/$(basename "$WHEEL")
  if [ -f "$R$dest" ] && [ "$("${HELPER[@]}" wheel-id "$R$dest")" = "$wid" ]; then
    report unchanged "$dest" "same content $wid"
  else
    put_file "$WHEEL" "$dest" 0644 "content $wid" || true
  fi
  for old in "$R"/opt/meter-agent/wheels/meter_agent-*.whl; do
    [ -e "$old" ] && [ "$old" != "$R$dest" ] || continue
    if [ "$DRY" = 1 ]; then report "would remove" "${old#"$R"}"; else rm -f "$old"; report removed "${old#"$R"}"; fi
  done
else  # a dry run builds nothing, so it can only say what it would compare
  installed=$(cd "$R/opt/meter-agent/wheels" 2>/dev/null && ls meter_agent-*.whl 2>/dev/null | head -1 || true)
  if [ -n "$installed" ]; then
    report "would check" "/opt/meter-agent/wheels/$installed" "replaced if the new build differs"
  else
    report "would create" "/opt/meter-agent/wheels/meter_agent-<version>-py3-none-any.whl"
  fi
fi
if [ -n "$WHEELHOUSE" ]; then
  for w in "$WHEELHOUSE"/*.whl; do
    case $(basename "$w") in meter_agent-*) continue ;; esac
    put_file "$w" "/opt/meter-agent/wheels/$(basename "$w")" 0644 || true
  done
fi
put_file "$HERE/deploy/meter-agent-setup" /opt/meter-agent/bin/meter-agent-setup 0755 || true
put_file "$HERE/docs/technician.md" /opt/meter-agent/docs/technician.md 0644 || true
put_file "$HERE/deploy/meter-agent-cli" /usr/local/bin/meter-agent 0755 || true
put_file "$HERE/deploy/meter-agent.sysusers" /etc/sysusers.d/meter-agent.conf 0644 || true
put_file "$HERE/deploy/meter-agent.tmpfiles" /etc/tmpfiles.d/meter-agent.conf 0644 || true

echo "[keys]"
put_dir /etc/meter-agent 0755 || true
put_dir /etc/meter-agent/keys 0750 || true
key_step "command key" "$CMD_KEY" /etc/meter-agent/keys/command.key
key_step "token key" "$TOKEN_KEY" /etc/meter-agent/keys/token.key
NEW_PASSWORD=""
if [[ $FLAGS == *web-password* ]]; then
  pw=/etc/meter-agent/keys/web.password
  if [ -n "$WEB_PW" ]; then put_file "$WEB_PW" "$pw" 0600 "status page password, given" || true
  elif [ -f "$R$pw" ]; then report unchanged "$pw" "status page password, kept"
  elif [ "$DRY" = 1 ]; then report "would create" "$pw" "status page password, random"
  else NEW_PASSWORD=$("${HELPER[@]}" password-new "$R$pw"); report created "$pw" "status page password, random"
  fi
fi

echo "[config]"
put_file "$WORK/agent.toml" /etc/meter-agent/agent.toml 0640 "from $BOARD_NAME.toml" || true

echo "[systemd]"
put_file "$HERE/deploy/meter-agent.service" /etc/systemd/system/meter-agent.service 0644 && UNITS_CHANGED=1
put_file "$HERE/deploy/meter-agent-setup.service" /etc/systemd/system/meter-agent-setup.service 0644 && UNITS_CHANGED=1
put_link /etc/systemd/system/multi-user.target.wants/meter-agent.service \
  /etc/systemd/system/meter-agent.service && UNITS_CHANGED=1

echo "[udev]"
"${HELPER[@]}" render-udev "$HERE/deploy/99-meter-agent-rs485.rules" "$WORK/udev.rules" \
  --board "$BOARD_NAME" --kind "$UDEV_KIND"
put_file "$WORK/udev.rules" /etc/udev/rules.d/99-meter-agent-rs485.rules 0644 \
  "$([ $UDEV_KIND = hat ] && echo 'HAT UART ttyAMA0 -> /dev/rs485-0, USB -> /dev/rs485-1' \
     || echo 'USB adapter -> /dev/rs485-0'), FTDI latency 1 ms" && UDEV_CHANGED=1

if [ "$UDEV_KIND" = hat ]; then
  echo "[boot]"
  boot=""
  for dir in "$BOOTFS" "$R/boot/firmware" "$R/boot"; do
    if [ -n "$dir" ] && [ -f "$dir/config.txt" ] && [ -f "$dir/cmdline.txt" ]; then boot=$dir; break; fi
  done
  if [ -z "$boot" ]; then
    report skipped "config.txt" "not found; give --bootfs DIR, or set enable_uart=1 and dtoverlay=disable-bt by hand"
  else
    mapfile -t boot_changes < <("${HELPER[@]}" boot-config "$boot/config.txt" "$boot/cmdline.txt" \
                                $([ "$DRY" = 1 ] && echo --dry-run))
    shown=$boot; [ "$boot" = "$BOOTFS" ] || shown=${boot#"$R"}
    if [ ${#boot_changes[@]} -eq 0 ]; then report unchanged "$shown/" "UART on, Bluetooth off it, no serial console"
    else for c in "${boot_changes[@]}"; do report "$([ "$DRY" = 1 ] && echo 'would update' || echo updated)" "$shown/${c%%:*}" "${c#*: }"; done
    fi
  fi
fi

# -- 4. on a live board: apply now. On a card: the first boot does it. -----------------
if [ "$LIVE" = 1 ]; then
  echo "[apply]"
  if [ "$DRY" = 1 ]; then
    report "would run" "meter-agent-setup" "user meter-agent in dialout, ownership, venv if the wheel changed"
    [ "$UDEV_CHANGED" = 1 ] && report "would run" "udevadm control --reload-rules; udevadm trigger"
    [ "$UNITS_CHANGED" = 1 ] && report "would run" "systemctl daemon-reload"
    report "would run" "systemctl restart meter-agent" "if anything changed or it is not running"
  else
    setup_out=$(/opt/meter-agent/bin/meter-agent-setup)
    case $setup_out in *"venv unchanged"*) report unchanged "meter-agent-setup" "user, ownership, venv" ;;
                       *) report ran "meter-agent-setup" "$(echo "$setup_out" | tail -1)" ;; esac
    if [ "$UDEV_CHANGED" = 1 ]; then
      udevadm control --reload-rules
      udevadm trigger --action=add --subsystem-match=tty --subsystem-match=usb-serial
      report reloaded "udev rules"
    fi
    [ "$UNITS_CHANGED" = 0 ] || { systemctl daemon-reload; report reloaded "systemd units"; }
    if [ "$CHANGED" -gt 0 ] || ! systemctl is-active --quiet meter-agent.service; then
      systemctl restart meter-agent.service
      report restarted "meter-agent.service"
    else
      report unchanged "meter-agent.service" "running"
    fi
  fi
fi

echo
echo "head-end registration for $GATEWAY (SHA-256 of the 32 key bytes, first 16 hex digits):"
printf '%s\n' "${FINGERPRINTS[@]}"
if [ -n "$NEW_PASSWORD" ]; then
  echo "status page password (shown once; it is in /etc/meter-agent/keys/web.password): $NEW_PASSWORD"
fi
if [ "$DRY" = 1 ]; then
  echo "dry run: $CHANGED step(s) would change, $UNCHANGED unchanged; nothing was changed"
else
  echo "done: $CHANGED changed, $UNCHANGED unchanged"
fi
if [ "$LIVE" = 0 ] && [ "$DRY" = 0 ] && [ "$CHANGED" -gt 0 ]; then
  echo "first boot: meter-agent-setup creates user meter-agent and the venv (pip needs the"
  echo "network unless --wheelhouse was given), then meter-agent starts; check with"
  echo "'sudo meter-agent status' and 'journalctl -u meter-agent -u meter-agent-setup'"
fi
