# bash completion for lbd (lvs-userspace), installed as .../bash-completion/completions/lbd.
# Needs only bash; works with or without the bash-completion package.

_lbd() {
    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]}
    local options="--config --check --diff --socket --queue-num --queue-balance --queue-cpus
        --queue-cpu-fanout --gso --gso-mtu --engine --qdisc-bypass --fail-open --queue-maxlen --overload-guard --overload-xdp --overload-napi --no-steering --no-iptables
        --steering --steer-hook --nat-replies --conntrack --down-policy --cleanup --state-dir --restore --conn-max --verbose -v
        --log-format --metrics --packet-source --xdp-interface --xdp-mode --xdp-copy --xdp-fastpath
        --sync-threshold --sync-refresh-period --sync-retries --sync-persist-mode --version --help -h"
    COMPREPLY=()
    case $prev in
        --config|--socket) COMPREPLY=($(compgen -f -- "$cur")); return 0 ;;
        --state-dir) COMPREPLY=($(compgen -d -- "$cur")); return 0 ;;
        --engine) COMPREPLY=($(compgen -W "c python" -- "$cur")); return 0 ;;
        --down-policy) COMPREPLY=($(compgen -W "open closed" -- "$cur")); return 0 ;;
        --overload-guard) COMPREPLY=($(compgen -W "on off" -- "$cur")); return 0 ;;
        --steering) COMPREPLY=($(compgen -W "iptables nftables" -- "$cur")); return 0 ;;
        --steer-hook) COMPREPLY=($(compgen -W "prerouting input" -- "$cur")); return 0 ;;
        --nat-replies) COMPREPLY=($(compgen -W "forward ingress" -- "$cur")); return 0 ;;
        --packet-source) COMPREPLY=($(compgen -W "nfqueue afxdp" -- "$cur")); return 0 ;;
        --xdp-mode) COMPREPLY=($(compgen -W "auto native generic" -- "$cur")); return 0 ;;
        --xdp-interface|--overload-xdp|--overload-napi) COMPREPLY=($(compgen -W "$(ls /sys/class/net 2>/dev/null)" -- "$cur")); return 0 ;;
        --log-format) COMPREPLY=($(compgen -W "text json" -- "$cur")); return 0 ;;
        --sync-retries) COMPREPLY=($(compgen -W "0 1 2 3" -- "$cur")); return 0 ;;
        --sync-persist-mode) COMPREPLY=($(compgen -W "0 1" -- "$cur")); return 0 ;;
        --queue-num|--queue-balance|--queue-cpus|--gso-mtu|--queue-maxlen|--conn-max|--metrics) return 0 ;;
        --sync-threshold|--sync-refresh-period) return 0 ;;
    esac
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$options" -- "$cur"))
    else
        # --check FILE: configuration files
        COMPREPLY=($(compgen -f -- "$cur"))
    fi
    return 0
}

complete -F _lbd lbd
