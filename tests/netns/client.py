"""Run inside the client namespace: one download, reporting its digest and, in
active mode, the address the data connection came from."""

from __future__ import annotations

import ftplib
import hashlib
import json
import socket
import sys


def main() -> None:
    host, port, user, password, path, mode = sys.argv[1:7]
    ftp = ftplib.FTP(timeout=30)
    ftp.connect(host, int(port))
    ftp.login(user, password)
    ftp.voidcmd("TYPE I")
    digest = hashlib.sha256()
    size = 0
    peer = None
    data_host = None
    if mode in ("pasv", "epsv"):
        if mode == "pasv":
            reply = ftp.sendcmd("PASV")
            data_host, data_port = ftplib.parse227(reply)
        else:
            data_host = host
            data_port = ftplib.parse229(ftp.sendcmd("EPSV"), ftp.sock.getpeername())[1]
        conn = socket.create_connection((data_host, data_port), 30)
        ftp.sendcmd(f"RETR {path}")
    else:
        me = ftp.sock.getsockname()[0]
        with socket.create_server((me, 0)) as listener:
            listener.settimeout(30)
            my_port = listener.getsockname()[1]
            if mode == "eprt":
                ftp.voidcmd(f"EPRT |1|{me}|{my_port}|")
            else:
                ftp.sendport(me, my_port)
            ftp.sendcmd(f"RETR {path}")
            conn, peer = listener.accept()
    with conn:
        while chunk := conn.recv(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    ftp.voidresp()
    welcome = ftp.getwelcome()
    ftp.quit()
    print(
        json.dumps(
            {
                "sha256": digest.hexdigest(),
                "size": size,
                "peer": peer[0] if peer else None,
                "pasv_host": data_host if mode == "pasv" else None,
                "welcome": welcome,
            }
        )
    )


if __name__ == "__main__":
    main()
