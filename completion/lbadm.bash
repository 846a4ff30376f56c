# bash completion for lbadm (lvs-userspace), installed as .../bash-completion/completions/lbadm.
# Needs only bash; works with or without the bash-completion package. Virtual services after
# -t/-u come from the running lbd (`lbadm -S -n`), real servers after -r from that service.

_lbadm_services() {
    # $1: -t or -u. lbadm -S -n prints "-A -t VIP:PORT ..." per service; nothing if lbd is not running.
    local proto=$1 line
    "${_lbadm_cmd[@]}" -S -n 2>/dev/null | while read -r line; do
        set -- $line
        [[ $1 == -A && $2 == "$proto" ]] && printf '%s\n' "$3"
    done
}

_lbadm_reals() {
    # $1: -t or -u, $2: VIP:PORT. Lines "-a -t VIP:PORT -r RIP:PORT ...".
    local proto=$1 svc=$2 line
    "${_lbadm_cmd[@]}" -S -n 2>/dev/null | while read -r line; do
        set -- $line
        [[ $1 == -a && $2 == "$proto" && $3 == "$svc" && $4 == -r ]] && printf '%s\n' "$5"
    done
}

_lbadm() {
    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]}
    local commands="-A -E -D -C -R -S -a -e -d -L -l -Z -P -Q -G -h
        --add-service --edit-service --delete-service --clear --restore --save --add-server
        --edit-server --delete-server --list --zero --add-laddr --del-laddr --get-laddr --set
        --start-daemon --stop-daemon --reload --help doctor"
    local options="-t -u -f -s -p -M -r -g -i -m -b -w -x -y -c -n -o -z -F -j -6
        --tcp-service --udp-service --sctp-service --fwmark-service --scheduler --persistent
        --netmask --real-server --gatewaying --ipip --masquerading --fullnat --weight
        --u-threshold --l-threshold --connection --timeout --daemon --stats --rate --exact
        --thresholds --persistent-conn --tun-info --nosort --sort --numeric --ops --laddr
        --ifname --synproxy --toa --proxy-protocol --pe --sched-flags --tun-type --tun-port --tun-nocsum
        --tun-csum --tun-remcsum --syncid --sync-maxlen --mcast-interface --mcast-group
        --mcast-port --mcast-ttl --sync-ext-port --socket --json --ipv6"
    COMPREPLY=()

    # lbadm as the user typed it, with the same --socket, for asking lbd about its services.
    _lbadm_cmd=("${COMP_WORDS[0]}")
    local i
    for ((i = 1; i < COMP_CWORD; i++)); do
        if [[ ${COMP_WORDS[i]} == --socket ]]; then
            _lbadm_cmd+=(--socket "${COMP_WORDS[i+1]}")
        fi
    done

    if ((COMP_CWORD == 1)); then
        COMPREPLY=($(compgen -W "$commands" -- "$cur"))
        return 0
    fi
    if [[ ${COMP_WORDS[1]} == doctor ]]; then
        case $prev in
            --window|--queue-num) return 0 ;;
        esac
        COMPREPLY=($(compgen -W "--json --window --queue-num -h --help" -- "$cur"))
        return 0
    fi
    case $prev in
        -s|--scheduler)
            COMPREPLY=($(compgen -W "rr wlc wrr lc sed nq fo ovf lblc lblcr twos sh dh mh" -- "$cur"))
            return 0 ;;
        --sched-flags)
            COMPREPLY=($(compgen -W "sh-fallback sh-port mh-fallback mh-port flag-1 flag-2 flag-3" -- "$cur"))
            return 0 ;;
        -j|--synproxy) COMPREPLY=($(compgen -W "enable disable" -- "$cur")); return 0 ;;
        --proxy-protocol) COMPREPLY=($(compgen -W "v1 v2 disable" -- "$cur")); return 0 ;;
        --tun-type) COMPREPLY=($(compgen -W "ipip" -- "$cur")); return 0 ;;
        -t|--tcp-service) COMPREPLY=($(compgen -W "$(_lbadm_services -t)" -- "$cur")); return 0 ;;
        -u|--udp-service) COMPREPLY=($(compgen -W "$(_lbadm_services -u)" -- "$cur")); return 0 ;;
        -r|--real-server)
            local j proto="" svc=""
            for ((j = 1; j < COMP_CWORD - 1; j++)); do
                case ${COMP_WORDS[j]} in
                    -t|--tcp-service) proto=-t; svc=${COMP_WORDS[j+1]} ;;
                    -u|--udp-service) proto=-u; svc=${COMP_WORDS[j+1]} ;;
                esac
            done
            [[ -n $svc ]] && COMPREPLY=($(compgen -W "$(_lbadm_reals "$proto" "$svc")" -- "$cur"))
            return 0 ;;
        --socket) COMPREPLY=($(compgen -f -- "$cur")); return 0 ;;
        -p|--persistent|-M|--netmask|-w|--weight|-x|--u-threshold|-y|--l-threshold|-z|--laddr| \
        -F|--ifname|-f|--fwmark-service|--sctp-service|--pe|--tun-port|--syncid| \
        --sync-maxlen|--mcast-interface|--mcast-group|--mcast-port|--mcast-ttl|--sync-ext-port)
            return 0 ;;
    esac
    COMPREPLY=($(compgen -W "$options" -- "$cur"))
    return 0
}

complete -F _lbadm lbadm
