"""Tests of the INDI client and camera against Debian's indiserver."""
