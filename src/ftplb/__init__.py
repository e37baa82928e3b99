"""ftplb: an FTP load balancer."""

__version__ = "0.1.0"
