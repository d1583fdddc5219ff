"""What everything above the core runs on: settings, the loop, TLS, the log, the metrics registry."""
