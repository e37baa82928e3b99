"""Odd-but-legal FTP through inspect mode, against pyftpdlib, vsftpd and ProFTPD
as installed: each case runs the same steps straight to the server and
through ftplb, and what the client sees must be the same (docs/conformance.md
lists what each server itself cannot do)."""

from __future__ import annotations

import ftplib
import hashlib
import io
import os
import socket
import threading
import time
from collections.abc import Callable

import pytest

from tests.cluster import BALANCER_HOST
from tests.conformance.conftest import CLIENT, Pair

DATA = os.urandom(3 * 1024 * 1024 + 11)


def outcome(step: Callable[[ftplib.FTP], object], ftp: ftplib.FTP) -> object:
    """What a step returned, or the error reply's code (what a client acts on)."""
    try:
        return step(ftp)
    except ftplib.Error as exc:
        return f"error {str(exc)[:3]}"


def same(pair: Pair, step: Callable[[ftplib.FTP], object]) -> object:
    """Run `step` straight to the server and through ftplb; both must agree.
    (The sessions are closed, not QUIT: a step may have ended them.)"""
    ftp = pair.direct()
    try:
        want = outcome(step, ftp)
    finally:
        ftp.close()
    ftp = pair.through()
    try:
        got = outcome(step, ftp)
    finally:
        ftp.close()
    assert got == want, f"{pair.kind}: through ftplb {got!r}, directly {want!r}"
    return got


def code(reply: str) -> str:
    return reply[:3]


def multiline_shape(reply: str) -> tuple[str, int, str]:
    """Code, number of lines and last line (addresses differ between the paths)."""
    lines = reply.split("\n")
    return code(reply), len(lines), lines[-1][:3]


@pytest.mark.parametrize("command", ["FEAT", "HELP", "STAT", "SITE HELP", "SYST"])
def test_multi_line_replies_arrive_whole(pair: Pair, command: str) -> None:
    shape = same(pair, lambda ftp: multiline_shape(ftp.sendcmd(command)))
    if command in ("FEAT", "HELP") and pair.kind != "vsftpd":
        assert isinstance(shape, tuple) and shape[1] > 2, shape


def test_feat_and_help_are_byte_for_byte_the_servers(pair: Pair) -> None:
    for command in ("FEAT", "HELP"):
        same(pair, lambda ftp, c=command: outcome(lambda f: f.sendcmd(c), ftp))


def upload(pair: Pair, name: str, data: bytes) -> None:
    with pair.direct() as ftp:
        ftp.storbinary(f"STOR {pair.incoming}/{name}", io.BytesIO(data))


def test_size_mdtm_mlst_mlsd(pair: Pair) -> None:
    upload(pair, "facts.bin", DATA[:1000])
    path = f"{pair.incoming}/facts.bin"
    same(pair, lambda ftp: (ftp.voidcmd("TYPE I"), ftp.size(path)))
    same(pair, lambda ftp: code(ftp.sendcmd(f"MDTM {path}")))
    same(pair, lambda ftp: code(ftp.sendcmd(f"MLST {path}")))
    same(pair, lambda ftp: sorted(name for name, _ in ftp.mlsd(pair.incoming)))


def test_rest_resumes_downloads_and_uploads(pair: Pair) -> None:
    upload(pair, "resume.bin", DATA)

    def tail(ftp: ftplib.FTP) -> str:
        got = io.BytesIO()
        ftp.retrbinary(f"RETR {pair.incoming}/resume.bin", got.write, rest=1_000_000)
        return hashlib.sha256(got.getvalue()).hexdigest()

    assert same(pair, tail) == hashlib.sha256(DATA[1_000_000:]).hexdigest()

    def resume_upload(ftp: ftplib.FTP) -> object:
        name = f"{pair.incoming}/half-{ftp.sock.getsockname()[1]}.bin"
        ftp.storbinary(f"STOR {name}", io.BytesIO(DATA[:500_000]))
        ftp.storbinary(f"STOR {name}", io.BytesIO(DATA[500_000:]), rest=500_000)
        got = io.BytesIO()
        ftp.retrbinary(f"RETR {name}", got.write)
        return hashlib.sha256(got.getvalue()).hexdigest() == hashlib.sha256(DATA).hexdigest()

    same(pair, resume_upload)


def test_appe_stou_rename_delete(pair: Pair) -> None:
    def steps(ftp: ftplib.FTP) -> object:
        base = f"{pair.incoming}/x-{ftp.sock.getsockname()[1]}"
        got = io.BytesIO()
        return (
            outcome(lambda f: code(f.storbinary(f"STOR {base}", io.BytesIO(b"one,"))), ftp),
            outcome(lambda f: code(f.storbinary(f"APPE {base}", io.BytesIO(b"two"))), ftp),
            outcome(lambda f: (f.retrbinary(f"RETR {base}", got.write), got.getvalue())[1], ftp),
            outcome(lambda f: code(f.rename(base, base + ".renamed")), ftp),
            outcome(lambda f: code(f.delete(base + ".renamed")), ftp),
            # STOU stores in the current directory, under a name of the server's.
            outcome(
                lambda f: (f.cwd(pair.incoming), code(f.storbinary("STOU", io.BytesIO(b"u"))))[1],
                ftp,
            ),
        )

    result = same(pair, steps)
    assert isinstance(result, tuple) and result[2] == b"one,two", result


def test_non_utf8_file_names_round_trip(pair: Pair) -> None:
    name = "caf\xe9-\xff.bin"  # latin-1 on the wire: not UTF-8

    def steps(ftp: ftplib.FTP) -> object:
        path = f"{pair.incoming}/{ftp.sock.getsockname()[1]}-{name}"
        stored = outcome(lambda f: code(f.storbinary(f"STOR {path}", io.BytesIO(b"x"))), ftp)
        listed = [
            n for n in outcome(lambda f: f.nlst(pair.incoming), ftp) or [] if n.endswith(name)
        ]
        return stored, len(listed) if isinstance(listed, list) else listed

    with pair.direct(encoding="latin-1") as ftp:
        want = steps(ftp)
    with pair.through(encoding="latin-1") as ftp:
        got = steps(ftp)
    assert got == want, (got, want)


def test_pipelined_commands_in_one_segment(pair: Pair) -> None:
    def pipelined(host: str, port: int) -> list[str]:
        with socket.create_connection((host, port), 10, (CLIENT, 0)) as s:
            f = s.makefile("rb")
            assert f.readline().startswith(b"220")
            user, password = pair.login
            s.sendall(
                f"USER {user}\r\nPASS {password}\r\nTYPE I\r\nPWD\r\nNOOP\r\nSYST\r\n".encode()
            )
            codes = []
            while len(codes) < 6:
                line = f.readline().decode()
                if line[:3].isdigit() and line[3:4] == " ":
                    codes.append(line[:3])
            return codes

    direct = pipelined(pair.backend.host, pair.backend.port)
    assert pipelined(BALANCER_HOST, pair.cluster.balancer_port) == direct


def test_epsv_all_refuses_the_rest(pair: Pair) -> None:
    with pair.through() as ftp:
        assert ftp.sendcmd("EPSV ALL").startswith("200")
        for command in (
            "PASV",
            f"PORT {CLIENT.replace('.', ',')},156,64",
            "EPRT |1|127.0.0.11|40000|",
        ):
            with pytest.raises(ftplib.error_perm, match=r"^501"):
                ftp.sendcmd(command)
        upload(pair, "all.bin", DATA[:70_000])
        ftp.voidcmd("TYPE I")
        host, port = ftplib.parse229(ftp.sendcmd("EPSV"), ftp.sock.getpeername())
        with socket.create_connection((host, port), 10, (CLIENT, 0)) as conn:
            ftp.sendcmd(f"RETR {pair.incoming}/all.bin")  # EPSV still works
            got = b""
            while chunk := conn.recv(65536):
                got += chunk
        assert ftp.voidresp().startswith("226") and got == DATA[:70_000]


def abort_transfer(ftp: ftplib.FTP, command: str) -> list[str]:
    """Start `command`, move some data, ABOR as ftplib does (urgent data), then
    NOOP: the reply codes up to NOOP's, in order (RFC 959: 426 for the
    transfer, then 226 for ABOR; ProFTPD sends only the 426)."""
    ftp.voidcmd("TYPE I")
    conn = ftp.transfercmd(command)
    try:
        if command.startswith("RETR"):
            conn.recv(65536)
        else:
            conn.sendall(b"z" * 65536)
        time.sleep(0.3)  # the transfer is under way at the server (not merely set up)
        codes = [ftp.abort()[:3]]
    finally:
        conn.close()
    ftp.putcmd("NOOP")
    while codes[-1] != "200" and len(codes) < 5:
        codes.append(ftp.getresp()[:3])
    return codes


# ftplib sends ABOR alone as urgent data: a server that sees only the urgent
# byte (ProFTPD) loses its line end. Through ftplb the backend gets ABOR as RFC
# 959 asks (IP, Synch, ABOR), so these cases expect the RFC's replies rather
# than what ftplib gets on its own.
ABORTED = ["426", "226", "200"]


def test_abor_during_retr(pair: Pair) -> None:
    # More than every socket buffer on either path can hold: the transfer is
    # still running when ABOR comes (a relay adds buffers of its own).
    upload(pair, "big.bin", DATA * 24)
    with pair.through() as ftp:
        assert abort_transfer(ftp, f"RETR {pair.incoming}/big.bin") == ABORTED


def test_abor_during_stor(pair: Pair) -> None:
    with pair.through() as ftp:
        name = f"{pair.incoming}/abort-{ftp.sock.getsockname()[1]}"
        assert abort_transfer(ftp, f"STOR {name}") == ABORTED


def test_commands_while_a_transfer_runs_and_quit(pair: Pair) -> None:
    upload(pair, "slow.bin", DATA * 4)

    def noop_during_retr(ftp: ftplib.FTP) -> list[str]:
        ftp.voidcmd("TYPE I")
        conn = ftp.transfercmd(f"RETR {pair.incoming}/slow.bin")
        ftp.putcmd("NOOP")  # while the data flows
        got = 0
        while chunk := conn.recv(65536):
            got += len(chunk)
        conn.close()
        replies = [ftp.getresp()[:3], ftp.getresp()[:3]]
        return [*sorted(replies), str(got == len(DATA) * 4)]

    same(pair, noop_during_retr)

    def quit_during_retr(ftp: ftplib.FTP) -> tuple[list[str], bool]:
        """QUIT while the data flows: the replies up to the end (a 421 or the
        bare close both mean closed), and whether the data connection ended."""
        ftp.voidcmd("TYPE I")
        conn = ftp.transfercmd(f"RETR {pair.incoming}/slow.bin")
        ftp.putcmd("QUIT")
        ended = threading.Event()

        def drain() -> None:
            try:
                while conn.recv(65536):
                    pass
            except OSError:
                pass
            ended.set()

        reader = threading.Thread(target=drain)
        reader.start()
        replies = []
        while len(replies) < 4:
            try:
                line = ftp.getline()
            except OSError:
                break
            if not line or line[:3] == "421":
                break
            if line[3:4] == " ":
                replies.append(line[:3])
            if line[:3] == "221":
                break
        reader.join(15)
        conn.close()
        return replies, ended.is_set()

    result = same(pair, quit_during_retr)
    assert isinstance(result, tuple) and result[1], result
