"""The inspect-mode session core, as transcripts: events in, commands out. No sockets."""

from __future__ import annotations

from ftplb.proto.session import (
    LINES_PER_EVENT,
    MAX_IN_FLIGHT,
    Close,
    CloseData,
    ConnectBackend,
    ConnectBackendData,
    ConnectClientData,
    InspectSession,
    ListenData,
    Log,
    LoginResult,
    Redispatch,
    SendBackend,
    SendClient,
    SessionSettings,
    StartBackendTLS,
    StartClientTLS,
    Transferred,
)

CLIENT = ("198.51.100.7", 40000)


def session(**settings: object) -> InspectSession:
    s = InspectSession(SessionSettings(client=CLIENT, public_address="203.0.113.1", **settings))  # type: ignore[arg-type]
    return s


def ready(**settings: object) -> InspectSession:
    """A session whose backend (10.0.0.5) has greeted and whose user is logged in."""
    s = session(**settings)
    assert s.start(0) == [ConnectBackend()]
    assert s.backend_connected("ftp1", "10.0.0.5", 0) == []
    assert s.backend_data(b"220 hello from 10.0.0.5\r\n", 0) == [
        SendClient(b"220 hello from 203.0.113.1\r\n")
    ]
    assert s.client_data(b"USER alice\r\nPASS pw\r\n", 1) == [
        SendBackend(b"USER alice\r\n"),
        SendBackend(b"PASS pw\r\n"),
    ]
    assert s.backend_data(b"331 go on\r\n230 welcome\r\n", 1) == [
        SendClient(b"331 go on\r\n"),
        SendClient(b"230 welcome\r\n"),
        LoginResult(True, "alice"),
    ]
    return s


def test_commands_wait_for_the_greeting() -> None:
    s = session()
    s.start(0)
    s.backend_connected("ftp1", "10.0.0.5", 0)
    # Pipelined before the backend greets: held, then sent in order.
    assert s.client_data(b"USER bob\r\n", 0) == []
    out = s.backend_data(b"220 hi\r\n", 0)
    assert out == [SendClient(b"220 hi\r\n"), SendBackend(b"USER bob\r\n")]


def test_client_pasv_answered_by_the_balancer() -> None:
    s = ready()
    assert s.client_data(b"PASV\r\n", 2) == [CloseData(), SendBackend(b"EPSV\r\n")]
    # Commands sent meanwhile wait for our 227.
    assert s.client_data(b"RETR f\r\n", 2) == []
    assert s.backend_data(b"229 Entering Extended Passive Mode (|||50001|)\r\n", 2) == [
        ListenData(("10.0.0.5", 50001), "198.51.100.7")
    ]
    assert s.data_listening(40123) == [
        SendClient(b"227 Entering Passive Mode (203,0,113,1,156,187).\r\n"),
        SendBackend(b"RETR f\r\n"),
    ]


def test_backend_without_epsv_falls_back_to_pasv_and_remembers() -> None:
    s = ready()
    s.client_data(b"EPSV\r\n", 2)
    assert s.backend_data(b"500 EPSV not understood\r\n", 2) == [SendBackend(b"PASV\r\n")]
    # The 227's address is ignored: the backend is where we reached it.
    out = s.backend_data(b"227 Entering Passive Mode (192,168,9,9,195,80).\r\n", 2)
    assert out == [ListenData(("10.0.0.5", 50000), "198.51.100.7")]
    assert s.data_listening(40000) == [
        SendClient(b"229 Entering Extended Passive Mode (|||40000|)\r\n")
    ]
    assert s.client_data(b"EPSV\r\n", 3) == [CloseData(), SendBackend(b"PASV\r\n")]


def test_active_client_passive_backend() -> None:
    s = ready()
    assert s.client_data(b"PORT 198,51,100,7,156,64\r\n", 2) == [
        CloseData(),
        SendClient(b"200 PORT command successful.\r\n"),
    ]
    # The client first: the backend hears of the transfer only once we reach it.
    assert s.client_data(b"RETR f\r\n", 2) == [ConnectClientData(("198.51.100.7", 40000))]
    assert s.client_data(b"NOOP\r\n", 2) == []  # waits behind the transfer's set-up
    assert s.data_client_connected(2) == [SendBackend(b"EPSV\r\n")]
    assert s.backend_data(b"229 ok (|||50002|)\r\n", 2) == [
        ConnectBackendData(("10.0.0.5", 50002)),
        SendBackend(b"RETR f\r\n"),
        SendBackend(b"NOOP\r\n"),
    ]
    assert s.backend_data(b"150 Opening\r\n", 2) == [SendClient(b"150 Opening\r\n")]
    assert s.data_opened(2) == []
    assert s.backend_data(b"226 done\r\n200 ok\r\n", 3) == [
        SendClient(b"226 done\r\n"),
        SendClient(b"200 ok\r\n"),
    ]
    out = s.data_closed(0, 1234, 3.5)
    assert out == [Transferred("download", "RETR", "f", 1234, 1.5)]
    # One PORT, one transfer: the next transfer without PORT goes straight through.
    assert s.client_data(b"LIST\r\n", 4) == [SendBackend(b"LIST\r\n")]


def test_active_upload_to_an_unreachable_client_never_reaches_the_backend() -> None:
    s = ready()
    s.client_data(b"EPRT |1|198.51.100.7|40000|\r\n", 2)
    assert s.client_data(b"STOR victim.txt\r\nPWD\r\n", 2) == [
        ConnectClientData(("198.51.100.7", 40000))
    ]
    # Nothing listens there: 425, and the backend never saw STOR (no truncated file).
    assert s.data_failed() == [
        SendClient(b"425 Cannot open data connection.\r\n"),
        Log("active-mode data connection to the client failed"),
        SendBackend(b"PWD\r\n"),
    ]


def test_port_checks() -> None:
    s = ready()
    bounce = s.client_data(b"PORT 192,0,2,1,156,64\r\n", 2)
    assert bounce[0] == SendClient(b"504 Data connections go only to your own address.\r\n")
    low = s.client_data(b"EPRT |1|198.51.100.7|21|\r\n", 2)
    assert low[0] == SendClient(b"504 Data connections go only to ports 1024 and above.\r\n")
    assert s.client_data(b"EPRT |9|x|1|\r\n", 2) == [
        SendClient(b"522 Network protocol not supported, use (1,2).\r\n")
    ]
    assert s.client_data(b"PORT 1,2,3\r\n", 2)[0].data.startswith(b"501 ")  # type: ignore[union-attr]


def test_balance_by_user_greets_then_replays_user() -> None:
    s = session(balance_by_user=True, greeting="ftplb ready.")
    assert s.start(0) == [SendClient(b"220 ftplb ready.\r\n")]
    assert s.client_data(b"PASV\r\n", 0) == [
        SendClient(b"530 Please log in with USER and PASS.\r\n")
    ]
    assert s.client_data(b"USER carol\r\nPASS x\r\n", 0) == [ConnectBackend(user="carol")]
    s.backend_connected("ftp2", "10.0.0.6", 0)
    # The backend's greeting is consumed; USER is replayed, then the held PASS.
    assert s.backend_data(b"220 backend\r\n", 0) == [
        SendBackend(b"USER carol\r\n"),
        SendBackend(b"PASS x\r\n"),
    ]
    assert s.backend_data(b"331 pw?\r\n", 0) == [SendClient(b"331 pw?\r\n")]


def test_failed_login_reported() -> None:
    s = session()
    s.start(0)
    s.backend_connected("ftp1", "10.0.0.5", 0)
    s.backend_data(b"220 hi\r\n", 0)
    s.client_data(b"USER a\r\nPASS b\r\n", 0)
    assert s.backend_data(b"331 pw\r\n530 no\r\n", 0)[-1] == LoginResult(False, "a")


def test_long_line_500_and_the_session_goes_on() -> None:
    s = ready()
    out = s.client_data(b"NOOP " + b"x" * 3000 + b"\r\n", 2)
    assert out[0] == SendClient(b"500 Line too long.\r\n")
    assert s.client_data(b"NOOP\r\n", 2) == [SendBackend(b"NOOP\r\n")]


def test_multiline_reply_and_scrubbing() -> None:
    s = ready()
    s.client_data(b"STAT\r\n", 2)
    out = s.backend_data(
        b"211-status\r\n Connected to 10.0.0.5\r\n 10.0.0.55 stays\r\n211 End\r\n", 2
    )
    assert out == [
        SendClient(b"211-status\r\n Connected to 203.0.113.1\r\n 10.0.0.55 stays\r\n211 End\r\n")
    ]


def test_backend_greeting_421_redispatches() -> None:
    s = session()
    s.start(0)
    s.backend_connected("ftp1", "10.0.0.5", 0)
    assert s.client_data(b"USER a\r\n", 0) == []
    # Nothing reached the client yet: another backend gets the session.
    assert s.backend_data(b"421 busy\r\n", 0) == [Redispatch("backend greeted with 421")]
    assert s.backend_connected("ftp2", "10.0.0.6", 0) == []
    assert s.backend_data(b"220 hi from 10.0.0.6\r\n", 0) == [
        SendClient(b"220 hi from 203.0.113.1\r\n"),
        SendBackend(b"USER a\r\n"),
    ]
    # None left: 421.
    assert s.backend_failed("no healthy backend") == [
        SendClient(b"421 Service not available\r\n"),
        Close("no healthy backend"),
    ]


def test_backend_that_never_greets_is_given_up_after_the_greeting_timeout() -> None:
    s = session(greeting_timeout=1.5)
    s.start(0)
    s.backend_connected("ftp1", "10.0.0.5", 10)
    assert s.next_deadline() == 11.5
    assert s.tick(11.4) == []
    assert s.tick(11.5) == [Redispatch("no greeting within 1.5s")]
    # A backend that closes before greeting is given up too.
    s.backend_connected("ftp2", "10.0.0.6", 12)
    assert s.backend_closed() == [Redispatch("backend closed before greeting")]
    # Bytes of a backend given up never reach the client.
    s.backend_connected("ftp3", "10.0.0.7", 12)
    assert s.backend_data(b"220 ftp3\r\n", 12) == [SendClient(b"220 ftp3\r\n")]


def test_timeouts() -> None:
    s = session(login_timeout=10, idle_timeout=30)
    s.start(0)
    assert s.next_deadline() == 10
    assert s.tick(9.9) == []
    assert s.tick(10)[-1] == Close("login timeout")
    t = ready(idle_timeout=30)
    assert t.tick(30) == []  # activity at 1
    t.data_opened(5)
    assert t.tick(100) == []  # a transfer is running: not idle
    t.data_closed(0, 0, 100)
    assert t.tick(130)[-1] == Close("idle timeout")


def test_telnet_ip_synch_before_abor() -> None:
    s = ready()
    assert s.client_data(b"\xff\xf4\xff\xf2ABOR\r\n", 2) == [SendBackend(b"ABOR\r\n")]


def test_auth_refused_until_tls_exists() -> None:
    s = ready()
    assert s.client_data(b"AUTH TLS\r\n", 2)[0].data.startswith(b"502 ")  # type: ignore[union-attr]


def test_backend_passive_failure_in_active_mode_drops_the_client_connection() -> None:
    s = ready()
    s.client_data(b"PORT 198,51,100,7,156,64\r\nRETR f\r\n", 2)
    s.data_client_connected(2)
    assert s.backend_data(b"500 no passive today\r\n", 2) == [SendBackend(b"PASV\r\n")]
    assert s.backend_data(b"421 nope\r\n", 2) == [
        Log("backend passive mode failed: backend answered PASV with 421"),
        CloseData(),
        SendClient(b"425 Cannot open data connection.\r\n"),
    ]


def test_backend_tls_on_secures_the_backend_before_the_client_hears_the_greeting() -> None:
    s = session(backend_tls="on")
    s.start(0)
    s.backend_connected("ftp1", "10.0.0.5", 0)
    assert s.client_data(b"USER alice\r\n", 0) == []  # waits, as for any greeting
    assert s.backend_data(b"220 hi\r\n", 0) == [SendBackend(b"AUTH TLS\r\n")]
    assert s.backend_data(b"234 go ahead\r\n", 0) == [StartBackendTLS()]
    assert s.backend_tls_ready() == [SendBackend(b"PBSZ 0\r\n")]
    assert s.backend_data(b"200 PBSZ=0\r\n", 0) == [SendBackend(b"PROT P\r\n")]
    # None of this reached the client; now the greeting does, and USER goes on.
    assert s.backend_data(b"200 PROT now Private\r\n", 0) == [
        SendClient(b"220 hi\r\n"),
        SendBackend(b"USER alice\r\n"),
    ]
    assert s.backend_tls
    s.backend_data(b"331 pw\r\n", 1)
    s.client_data(b"PASS x\r\n", 1)
    s.backend_data(b"230 in\r\n", 1)
    # Data toward the backend is TLS too, whatever the client's PROT.
    s.client_data(b"EPSV\r\n", 2)
    assert s.backend_data(b"229 ok (|||50001|)\r\n", 2) == [
        ListenData(("10.0.0.5", 50001), "198.51.100.7", tls=False, backend_tls=True)
    ]
    s.data_listening(40000)
    s.client_data(b"PORT 198,51,100,7,156,64\r\nRETR f\r\n", 3)
    assert s.data_client_connected(3) == [SendBackend(b"EPSV\r\n")]
    assert s.backend_data(b"229 ok (|||50002|)\r\n", 3) == [
        ConnectBackendData(("10.0.0.5", 50002), tls=True),
        SendBackend(b"RETR f\r\n"),
    ]


def test_backend_tls_match_follows_the_client() -> None:
    s = ready(backend_tls="match", tls=True)
    assert not s.backend_tls  # a plain client: a plain backend
    out = s.client_data(b"AUTH TLS\r\n", 2)
    # The client's 234 and its handshake at once; its next commands wait for the backend's.
    assert out == [
        SendClient(b"234 AUTH TLS successful.\r\n"),
        StartClientTLS(),
        SendBackend(b"AUTH TLS\r\n"),
    ]
    assert s.client_data(b"PBSZ 0\r\n", 2) == []
    assert s.backend_data(b"234 ok\r\n", 2) == [StartBackendTLS()]
    s.backend_tls_ready()
    s.backend_data(b"200 ok\r\n", 2)
    assert s.backend_data(b"200 ok\r\n", 2) == [SendClient(b"200 PBSZ=0\r\n")]
    assert s.backend_tls


def test_backend_tls_match_with_implicit_tls_client() -> None:
    s = session(backend_tls="match", tls=True, implicit_tls=True)
    s.start(0)
    s.backend_connected("ftp1", "10.0.0.5", 0)
    assert s.backend_data(b"220 hi\r\n", 0) == [SendBackend(b"AUTH TLS\r\n")]


def test_backend_refusing_tls_closes_with_421() -> None:
    s = session(backend_tls="on")
    s.start(0)
    s.backend_connected("ftp1", "10.0.0.5", 0)
    s.backend_data(b"220 hi\r\n", 0)
    assert s.backend_data(b"530 TLS not configured\r\n", 0) == [
        SendClient(b"421 Service not available\r\n"),
        Close("backend TLS: AUTH TLS answered 530"),
    ]
    s = session(backend_tls="on")
    s.start(0)
    s.backend_connected("ftp1", "10.0.0.5", 0)
    s.backend_data(b"220 hi\r\n234 ok\r\n", 0)
    assert s.backend_tls_failed("handshake failed: certificate verify failed") == [
        SendClient(b"421 Service not available\r\n"),
        Close("backend TLS: handshake failed: certificate verify failed"),
    ]


def test_refused_data_connection_turns_the_transfer_reply_into_522() -> None:
    s = ready(tls=True)
    s.client_data(b"EPSV\r\n", 2)
    s.backend_data(b"229 ok (|||50001|)\r\n", 2)
    s.data_listening(40000)
    # The client connects before RETR, without resuming the TLS session: refused.
    assert s.data_refused("must resume") == []
    assert s.client_data(b"RETR f\r\n", 3) == [SendBackend(b"RETR f\r\n")]
    # The backend saw its side dropped; whatever it says, the client hears why.
    assert s.backend_data(b"150 Opening\r\n", 3) == [SendClient(b"150 Opening\r\n")]
    assert s.backend_data(b"426 Failure writing network stream.\r\n", 3) == [
        SendClient(b"522 must resume\r\n"),
        CloseData(),
    ]
    # The next transfer is judged on its own.
    s.client_data(b"EPSV\r\n", 4)
    s.backend_data(b"229 ok (|||50002|)\r\n", 4)
    s.data_listening(40001)
    s.client_data(b"RETR f\r\n", 4)
    assert s.backend_data(b"226 done\r\n", 5) == [SendClient(b"226 done\r\n")]


# --- defects found by attacking the balancer (issue: security and data loss) ----


def test_cr_smuggled_pasv_is_still_ours() -> None:
    for line in (b"PASV\r\r\n", b"pasv \r\n", b"PaSv\r\r\r\n"):
        s = ready()
        assert s.client_data(line, 2) == [CloseData(), SendBackend(b"EPSV\r\n")], line
    s = ready()
    assert s.client_data(b"EPSV\r\r\n", 2) == [CloseData(), SendBackend(b"EPSV\r\n")]


def test_control_bytes_inside_a_command_are_refused_here() -> None:
    for line in (b"PASV\rX\r\n", b"RETR a\x00b\r\n", b"EPSV\t\r\n", b"NO\x7fOP\r\n"):
        s = ready()
        out = s.client_data(line, 2)
        assert out[0] == SendClient(b"500 Control characters are not allowed in commands.\r\n")
        assert not any(isinstance(c, SendBackend) for c in out), line
    s = ready()
    assert s.client_data(b"P4SV\r\n", 2)[0] == SendClient(
        b"500 Syntax error, command unrecognized.\r\n"
    )


def test_a_passive_reply_the_client_did_not_ask_us_for_is_withheld() -> None:
    s = ready()
    assert s.client_data(b"SITE PASV\r\n", 2) == [SendBackend(b"SITE PASV\r\n")]
    assert s.backend_data(b"227 Entering Passive Mode (10,0,0,5,195,80).\r\n", 2) == [
        SendClient(b"502 Command not implemented.\r\n"),
        Log("backend answered SITE with 227: withheld from the client"),
    ]


def test_paths_that_look_like_the_backend_address_are_left_alone() -> None:
    s = ready()
    s.client_data(b"MKD 10.0.0.5\r\n", 2)
    assert s.backend_data(b'257 "/10.0.0.5" directory created.\r\n', 2) == [
        SendClient(b'257 "/10.0.0.5" directory created.\r\n')
    ]
    # Where a server does talk about itself, both forms are scrubbed.
    s.client_data(b"STAT\r\n", 3)
    assert s.backend_data(b"211-at 10.0.0.5\r\n data (10,0,0,5,4,1)\r\n211 End\r\n", 3) == [
        SendClient(b"211-at 203.0.113.1\r\n data (203,0,113,1,4,1)\r\n211 End\r\n")
    ]


def test_a_long_line_between_two_commands_keeps_the_order_of_the_replies() -> None:
    s = ready()
    out = s.client_data(b"NOOP\r\n" + b"x" * 5000 + b"\r\nPWD\r\n", 2)
    assert out == [SendBackend(b"NOOP\r\n")]  # our 500 must not overtake NOOP's 200
    assert s.backend_data(b"200 ok\r\n", 2) == [
        SendClient(b"200 ok\r\n"),
        SendClient(b"500 Line too long.\r\n"),
        Log("client line refused: line longer than 2048 bytes"),
        SendBackend(b"PWD\r\n"),
    ]
    assert s.backend_data(b'257 "/"\r\n', 2) == [SendClient(b'257 "/"\r\n')]


def test_the_rest_of_an_over_long_line_is_never_a_command() -> None:
    s = ready()
    out = s.client_data(b"x" * 3000, 2)
    assert out[0] == SendClient(b"500 Line too long.\r\n")
    # Its tail, up to the line feed, is dropped: no HELP reaches the backend.
    assert s.client_data(b"HELP SITE\r\n", 2) == []
    assert s.client_data(b"NOOP\r\n", 2) == [SendBackend(b"NOOP\r\n")]


def test_commands_in_flight_are_capped_and_the_rest_wait_in_the_buffer() -> None:
    s = ready()
    out = s.client_data(b"NOOP\r\n" * 1000, 2)
    assert out == [SendBackend(b"NOOP\r\n")] * MAX_IN_FLIGHT
    assert not s.wants_client_data and not s.runnable
    out = s.backend_data(b"200 ok\r\n", 2)
    assert out == [SendClient(b"200 ok\r\n"), SendBackend(b"NOOP\r\n")]


def test_local_replies_are_handled_a_bounded_number_per_event() -> None:
    s = ready()
    out = s.client_data(b"EPRT\r\n" * 1000, 2)
    assert len(out) == LINES_PER_EVENT
    assert s.runnable and not s.wants_client_data
    for _ in range(1000):
        if not s.runnable:
            break
        s.resume(2)
    assert s.wants_client_data


def test_a_pass_left_unanswered_when_the_client_hangs_up_is_a_failed_login() -> None:
    s = session()
    s.start(0)
    s.backend_connected("ftp1", "10.0.0.5", 0)
    s.backend_data(b"220 hi\r\n", 0)
    s.client_data(b"USER a\r\n", 0)
    s.backend_data(b"331 pw\r\n", 0)
    s.client_data(b"PASS guess\r\nQUIT\r\n", 0)  # the backend takes its time with 530
    assert s.client_closed() == [LoginResult(False, "a")]
    t = ready()
    assert t.client_closed() == []  # logged in, nothing pending: nothing to count


def test_plaintext_pipelined_after_auth_tls_is_dropped() -> None:
    s = ready(tls=True)
    out = s.client_data(b"AUTH TLS\r\nUSER injected\r\n", 2)
    assert out == [
        SendClient(b"234 AUTH TLS successful.\r\n"),
        StartClientTLS(),
        Log("15 bytes sent after AUTH TLS in the clear dropped"),
    ]
    assert s.client_data(b"NOOP\r\n", 3) == [SendBackend(b"NOOP\r\n")]


def test_any_answer_to_pass_but_230_is_a_failed_login() -> None:
    s = session()
    s.start(0)
    s.backend_connected("ftp1", "10.0.0.5", 0)
    s.backend_data(b"220 hi\r\n", 0)
    s.client_data(b"USER a\r\n", 0)
    s.backend_data(b"331 pw\r\n", 0)
    s.client_data(b"PASS guess\r\nQUIT\r\n", 0)
    # pyftpdlib answers the QUIT at once and the delayed 530 never comes.
    assert s.backend_data(b"221 Goodbye.\r\n", 0) == [
        SendClient(b"221 Goodbye.\r\n"),
        LoginResult(False, "a"),
    ]


def test_a_backend_that_hangs_up_on_a_pending_pass_counts_a_failure() -> None:
    s = session()
    s.start(0)
    s.backend_connected("ftp1", "10.0.0.5", 0)
    s.backend_data(b"220 hi\r\n", 0)
    s.client_data(b"USER a\r\n", 0)
    s.backend_data(b"331 pw\r\n", 0)
    s.client_data(b"PASS guess\r\n", 0)
    assert s.backend_closed() == [LoginResult(False, "a"), Close("backend closed")]


def test_replies_data_drops_and_closes_keep_their_order() -> None:
    # Nothing is held back and released later: what the backend says reaches
    # the client before the data channel is dropped or the session closed.
    s = ready()
    s.client_data(b"RETR missing\r\n", 2)
    assert s.backend_data(b"550 no such file\r\n421 shutting down\r\n", 2) == [
        SendClient(b"550 no such file\r\n"),
        CloseData(),
        SendClient(b"421 shutting down\r\n"),
    ]
    assert s.backend_closed() == [Close("backend closed")]
