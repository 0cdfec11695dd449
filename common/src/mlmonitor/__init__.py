"""Code shared by the monitor's services, written once."""
