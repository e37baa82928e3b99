"""The pool's FTP server: pyftpdlib with a PROXY-protocol-aware handler."""
