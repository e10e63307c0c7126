"""Test INDI drivers and the harness that runs indiserver in a private network namespace."""
