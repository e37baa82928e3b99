"""TOML configuration -> frozen, validated objects (config/model.py), read and
checked by config/load.py; single values by config/values.py."""

from ftplb.config.load import load_config, parse_config
from ftplb.config.model import (
    AdminConfig,
    BackendConfig,
    BalancerConfig,
    ClusterConfig,
    Config,
    DiscoveryConfig,
    HealthConfig,
    HostPort,
    LogConfig,
    PortRange,
    TlsConfig,
)
from ftplb.config.values import is_ip, parse_host_port, parse_ip, parse_port_range

__all__ = [
    "AdminConfig",
    "BackendConfig",
    "BalancerConfig",
    "ClusterConfig",
    "Config",
    "DiscoveryConfig",
    "HealthConfig",
    "HostPort",
    "LogConfig",
    "PortRange",
    "TlsConfig",
    "is_ip",
    "load_config",
    "parse_config",
    "parse_host_port",
    "parse_ip",
    "parse_port_range",
]
