"""The service: the daemon (signals, watchdog, reload, drain), its socket server, the
socket on disk, and systemd notification."""
