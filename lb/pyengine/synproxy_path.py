"""SYN-proxy and PROXY protocol glue of the packet path (native/src/synproxy.c's packet hooks and
timers, native/src/proxyproto.c's calls from core.c).

One job: the director's own handshake with the client (cookies), the deferred handshake with the
real server, the sequence shift between the two, its retransmission timers, and the PROXY header's
insertion; lb/pyengine/synproxy.py and proxyproto.py hold the protocol code itself.
"""

from __future__ import annotations

from lb import consts as C
from lb.engine import Action, EngineError, Reason, Verdict
from lb.model import ServiceKey, SynproxyConf
from lb.pyengine import proxyproto as px
from lb.pyengine import synproxy as sp
from lb.pyengine.conn import DIR_IN, DIR_OUT, Connection
from lb.pyengine.parse import TCP_ACK, TCP_RST, TCP_SYN, ParsedPacket
from lb.pyengine.schedule import Scheduling
from lb.pyengine.state import ESTABLISHED, NO_CONN, SYN_SENT
from lb.pyengine.svc import Service, service_of, toa_wanted
from lb.pyengine.xmit import NO_L2, xmit_l2
from lb.pyengine.xmit_fnat import toa_option

_SP_HELD = Action(Verdict.DROP, Reason.SP_HELD)
_SP_BAD_COOKIE = Action(Verdict.DROP, Reason.SP_BAD_COOKIE)
_BAD_L4_CSUM = Action(Verdict.DROP, Reason.BAD_L4_CSUM)


class SynproxyPath(Scheduling):
    """PyEngine's SYN-proxy and PROXY protocol steps (see the module docstring)."""

    @staticmethod
    def _px_header(conn: Connection, state: px.ProxyState) -> bytes:
        return px.header(state.version, conn.caddr, conn.cport, conn.vaddr, conn.vport)

    def _px_in(self, conn: Connection, state: px.ProxyState, action: Action, parsed: ParsedPacket) -> Action:
        fwd = conn.dest.fwd
        mtu = fwd.mtu if fwd is not None else 0
        return px.translate_in(state, self._px_header(conn, state), action, parsed, mtu, conn.sp is not None)

    def _sp_conf(self, service: Service | None) -> SynproxyConf:
        if service is None or service.sp_conf is None:
            return self._sp_default
        return service.sp_conf

    def _sp_miss(self, service: Service, packet: bytes, parsed: ParsedPacket, now_ms: int) -> Action:
        conf = self._sp_conf(service)
        fl = sp.first_flags(parsed.tcp_flags)
        minute = (now_ms // 60000) & sp.M32
        if fl in (TCP_SYN, TCP_ACK) and not sp.tcp_checksum_ok(packet, parsed):
            return _BAD_L4_CSUM  # the handshake is ours: a corrupted segment is neither answered nor opened
        if fl == TCP_SYN:
            cmss, csack = sp.parse_syn_options(packet, parsed.ip_header_len, parsed.tcp_doff)
            idx = 0
            for i, value in enumerate(sp.MSSTAB):
                if value <= cmss:
                    idx = i
            sack = csack and conf.sack
            cookie = self._cookies.make(parsed.saddr, parsed.daddr, parsed.sport, parsed.dport, parsed.tcp_seq, minute,
                                        idx | (int(sack) << 2))
            mss = conf.mss - px.room(service.spec.toa, service.spec.proxy_protocol)
            out = sp.build_tcp(parsed.daddr, parsed.dport, parsed.saddr, parsed.sport, cookie, parsed.tcp_seq + 1,
                               TCP_SYN | TCP_ACK, sp.SP_WINDOW, sp.syn_options(mss, sack))
            self._sp_stats["cookies_sent"] += 1
            if out is None:
                return Action(Verdict.DROP, Reason.SP_COOKIE)
            return Action(Verdict.ANSWER, Reason.SP_COOKIE, out=out)
        if fl != TCP_ACK:
            return NO_CONN  # as IPVS for non-SYN without a connection
        cookie = (parsed.tcp_ack - 1) & sp.M32
        client_isn = (parsed.tcp_seq - 1) & sp.M32
        data = self._cookies.check(parsed.saddr, parsed.daddr, parsed.sport, parsed.dport, cookie, client_isn, minute)
        if data < 0:
            self._sp_stats["cookies_invalid"] += 1
            return _SP_BAD_COOKIE
        self._sp_stats["cookies_valid"] += 1
        scheduled = self._schedule_conn(service, packet, parsed, now_ms)
        if isinstance(scheduled, Action):
            return scheduled
        conn = scheduled
        state = sp.SynproxyState(cookie, client_isn, sp.MSSTAB[data & 3], bool(data >> 2 & 1), parsed.tcp_win)
        conn.sp = state
        conn.toa_done = True  # TOA rides on the director's own handshake ACK
        if service.spec.proxy_protocol is not None:  # and so does the PROXY header
            conn.px = px.new_state(service.spec.proxy_protocol, conn.caddr, conn.cport, conn.vaddr, conn.vport,
                                   client_isn)
        self._set_state(conn, SYN_SENT)
        self._refresh(conn, now_ms)
        self._count_in(conn.dest, parsed.total_length)
        if parsed.payload_len and parsed.payload_len <= conf.data_max_bytes:
            start = parsed.ip_header_len + parsed.tcp_doff
            state.held = packet[start : start + parsed.payload_len]
        if conf.defer and not state.held:
            state.phase = sp.PHASE_WAIT_DATA
            return _SP_HELD
        return self._sp_first_syn(conn, conf, now_ms)

    def _sp_first_syn(self, conn: Connection, conf: SynproxyConf, now_ms: int) -> Action:
        state = conn.sp
        assert state is not None
        state.phase = sp.PHASE_SYN_SENT
        state.rto_ms = conf.init_rto_ms
        self._sp_arm(conn, now_ms + state.rto_ms)
        self._sp_stats["syns_to_rs"] += 1
        out = self._sp_rs_syn(conn)
        action = None if out is None else xmit_l2(conn.dest, Reason.FORWARDED, out)
        return NO_L2 if action is None else action  # the timer retries once forwarding state exists

    def _sp_arm(self, conn: Connection, due_ms: int) -> None:
        assert conn.sp is not None
        conn.sp.due_ms = due_ms
        self._sp_timers.push(due_ms, conn)

    @staticmethod
    def _sp_rs_syn(conn: Connection) -> bytes | None:
        """The SYN to the real server from the reply tuple's director side (FULLNAT: LIP:lport)."""
        state = conn.sp
        assert state is not None
        return sp.build_tcp(conn.reply_addr, conn.reply_port, conn.dest.addr, conn.rport, state.client_isn, 0,
                            TCP_SYN, state.client_win, sp.syn_options(state.mss, state.sack))

    @staticmethod
    def _sp_client_rst(conn: Connection) -> bytes | None:
        state = conn.sp
        assert state is not None
        return sp.build_tcp(conn.vaddr, conn.vport, conn.caddr, conn.cport, state.cookie_isn + 1, state.client_isn + 1,
                            TCP_RST | TCP_ACK, 0)

    def _sp_in(self, conn: Connection, packet: bytes, parsed: ParsedPacket, now_ms: int) -> Action:
        state = conn.sp
        assert state is not None
        conf = self._sp_conf(service_of(conn.dest))
        self._refresh(conn, now_ms)
        if state.phase in (sp.PHASE_WAIT_DATA, sp.PHASE_SYN_SENT):
            if parsed.tcp_flags & (TCP_RST | sp.TCP_FIN):
                self._release_now(conn)  # the client gave up first
                return _SP_HELD
            if parsed.payload_len == 0:
                action = _SP_HELD
                state.pure_acks += 1
                if state.pure_acks > conf.ack_storm_max:
                    # ACK-storm guard: reset the client, forget the connection.
                    rst = self._sp_client_rst(conn)
                    self._sp_stats["give_ups"] += 1
                    self._release_now(conn)
                    if rst is not None:
                        action = Action(Verdict.ANSWER, Reason.SP_HELD, out=rst)
                self._sp_stats["held_dropped"] += 1
                return action
            if (not state.held and parsed.tcp_seq == (state.client_isn + 1) & sp.M32
                    and parsed.payload_len <= conf.data_max_bytes):
                start = parsed.ip_header_len + parsed.tcp_doff
                state.held = packet[start : start + parsed.payload_len]
            else:
                self._sp_stats["held_dropped"] += 1  # the client retransmits it
            if state.phase == sp.PHASE_WAIT_DATA and state.held:
                return self._sp_first_syn(conn, conf, now_ms)
            return _SP_HELD
        # Established: FULLNAT rewrite, then the client's ACK and SACK edges into the server's space.
        self._tcp_transition(conn, DIR_IN, parsed.tcp_flags)
        self._refresh(conn, now_ms)
        self._count_in(conn.dest, parsed.total_length)
        action = conn.xmit.xmit_in(conn, packet, parsed)
        if action.verdict == Verdict.XMIT_L2 and action.out:
            o = bytearray(action.out)
            th = parsed.ip_header_len
            if o[th + 13] & TCP_ACK:
                sp.add32(o, th + 8, state.d_in, th + 16)
            sp.sack_shift(o, th, (o[th + 12] >> 4) * 4, state.d_in)
            action = Action(action.verdict, action.reason, bytes(o), action.ifindex, action.l2hdr)
        if conn.px is not None:
            action = self._px_in(conn, conn.px, action, parsed)  # the client's own numbers past the header
        return action

    def _sp_out(self, conn: Connection, packet: bytes, parsed: ParsedPacket, now_ms: int) -> Action:
        state = conn.sp
        assert state is not None
        self._refresh(conn, now_ms)
        dest = conn.dest
        if state.phase != sp.PHASE_DONE:
            fl = parsed.tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST)
            if (state.phase == sp.PHASE_SYN_SENT and fl == TCP_SYN | TCP_ACK
                    and parsed.tcp_ack == (state.client_isn + 1) & sp.M32):
                rs_isn = parsed.tcp_seq
                state.d_in = (rs_isn - state.cookie_isn) & sp.M32
                state.phase = sp.PHASE_DONE
                state.due_ms = 0  # disarms the pending retransmission
                self._sp_stats["handshakes"] += 1
                self._set_state(conn, ESTABLISHED)
                dest.handshakes += 1
                self._refresh(conn, now_ms)
                opts = toa_option(conn.cport, conn.caddr) if toa_wanted(dest) else b""
                held, state.held = state.held, b""
                if conn.px is not None:  # the PROXY header first, then what of the held data fits
                    mtu = dest.fwd.mtu if dest.fwd is not None else 0
                    held = px.first_payload(conn.px, self._px_header(conn, conn.px), held, mtu)
                out = sp.build_tcp(conn.reply_addr, conn.reply_port, dest.addr, conn.rport, state.client_isn + 1,
                                   rs_isn + 1, TCP_ACK | (sp.TCP_PSH if held else 0), state.client_win, opts, held)
                action = None if out is None else xmit_l2(dest, Reason.SP_HANDSHAKE, out)
                return NO_L2 if action is None else action
            if state.phase == sp.PHASE_SYN_SENT and fl & TCP_ACK and not fl & TCP_RST:
                # An ACK that does not answer our SYN (e.g. a TIME_WAIT's challenge ACK): reset it
                # with SEQ = its ACK (RFC 793, a client in SYN-SENT); the next SYN finds a clean slate.
                out = sp.build_tcp(conn.reply_addr, conn.reply_port, dest.addr, conn.rport, parsed.tcp_ack, 0, TCP_RST, 0)
                action = None if out is None else xmit_l2(dest, Reason.SP_HELD, out)
                return _SP_HELD if action is None else action
            if fl & TCP_RST:
                # The server refused: reset the client and forget the connection.
                rst = self._sp_client_rst(conn)
                self._sp_stats["rs_resets"] += 1
                self._release_now(conn)
                if rst is None:
                    return Action(Verdict.DROP, Reason.FORWARDED)
                return Action(Verdict.ANSWER, Reason.FORWARDED, out=rst)
            return _SP_HELD
        self._tcp_transition(conn, DIR_OUT, parsed.tcp_flags)
        self._refresh(conn, now_ms)
        self._count_out(dest, parsed.total_length)
        action = conn.xmit.xmit_out(conn, packet, parsed)
        if action.verdict == Verdict.ANSWER and action.out:
            o = bytearray(action.out)
            th = parsed.ip_header_len
            sp.add32(o, th + 4, -state.d_in, th + 16)
            action = Action(action.verdict, action.reason, bytes(o))
        if conn.px is not None:
            action = px.translate_out(conn.px, action, parsed)  # its ACK and SACK edges back before the header
        return action

    def _sp_run_timers(self, now_ms: int, actions: list[Action]) -> None:
        """The due SYN-proxy timers: SYN retransmissions to real servers (XMIT_L2) and give-ups
        (ANSWER: a RST to the client), appended to `actions`."""
        timers = self._sp_timers
        while (due := timers.due()) is not None and due <= now_ms:
            conn: Connection = timers.pop()  # type: ignore[assignment]
            state = conn.sp
            assert state is not None
            conf = self._sp_conf(service_of(conn.dest))
            if state.retries < conf.max_retries:
                # Exponential backoff: init, 2*init, 4*init, ... capped at max_rto.
                state.retries += 1
                state.rto_ms = min(state.rto_ms * 2, conf.max_rto_ms)
                self._sp_arm(conn, now_ms + state.rto_ms)
                out = self._sp_rs_syn(conn)
                action = None if out is None else xmit_l2(conn.dest, Reason.FORWARDED, out)
                if action is None:
                    continue  # no forwarding state: nothing can leave; the next round retries
                self._sp_stats["syn_retransmits"] += 1
                actions.append(action)
                continue
            rst = self._sp_client_rst(conn)
            self._sp_stats["give_ups"] += 1
            self._release_now(conn)
            if rst is not None:
                actions.append(Action(Verdict.ANSWER, Reason.FORWARDED, out=rst))

    def set_synproxy(self, key: ServiceKey | None, conf: SynproxyConf | None) -> None:
        """The global default (key None), or one service's own settings (conf None: the default)."""
        with self._lock:
            if key is None:
                if conf is None:
                    raise ValueError("the global SYN-proxy default needs settings")
                self._check_sp_conf(conf)
                self._sp_default = conf
                return
            service = self._service(key)
            if conf is not None:
                self._check_sp_conf(conf)
            service.sp_conf = conf

    @staticmethod
    def _check_sp_conf(conf: SynproxyConf) -> None:
        """lb_sp_check_conf (SynproxyConf validates most of it already)."""
        if conf.wscale or conf.timestamps:
            raise EngineError("EOPNOTSUPP", "SYN-proxy supports neither window scaling nor timestamps")
        if (conf.init_rto_ms < 1 or conf.max_rto_ms < conf.init_rto_ms or conf.max_rto_ms > C.LB_SP_RTO_MS_MAX
                or conf.max_retries > C.LB_SP_MAX_RETRIES_MAX or not C.LB_SP_MSS_MIN <= conf.mss <= C.LB_SP_MSS_MAX
                or conf.data_max_bytes > C.LB_SP_DATA_MAX_BYTES_MAX):
            raise EngineError("EINVAL", f"SYN-proxy settings out of range: {conf}")

    def synproxy_stats(self) -> dict[str, int]:
        with self._lock:
            return dict(self._sp_stats)
