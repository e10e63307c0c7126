"""PropertyStore: what the INDI client remembers of the server's devices (pure, no server)."""

from __future__ import annotations

from phdserver.cameras.indi._events import (
    DefVector,
    DelProperty,
    Element,
    Message,
    SetVector,
)
from phdserver.cameras.indi._store import PropertyStore

DEV = "CCD Simulator"


def gain(value: float, lo: float | None = 0.0, hi: float | None = 100.0) -> Element:
    return Element(name="GAIN", value=value, min=lo, max=hi)


def test_a_set_updates_values_and_keeps_the_limits_it_does_not_repeat() -> None:
    store = PropertyStore()
    store.apply(DefVector(kind="Number", device=DEV, name="CCD_GAIN", perm="rw",
                          elements={"GAIN": gain(10.0)}))
    store.apply(SetVector(kind="Number", device=DEV, name="CCD_GAIN", state="Ok",
                          elements={"GAIN": gain(42.0, None, None),
                                    "UNDEFINED": gain(1.0)}))
    prop = store.get(DEV, "CCD_GAIN")
    assert prop is not None
    assert prop.number("GAIN") == 42.0
    assert (prop.elements["GAIN"].min, prop.elements["GAIN"].max) == (0.0, 100.0)
    assert prop.state == "Ok"
    assert "UNDEFINED" not in prop.elements  # a set cannot add elements


def test_a_set_before_its_definition_is_dropped() -> None:
    store = PropertyStore()
    store.apply(SetVector(kind="Number", device=DEV, name="CCD_GAIN",
                          elements={"GAIN": gain(42.0)}))
    assert store.get(DEV, "CCD_GAIN") is None
    assert store.devices() == []


def test_blob_data_is_never_kept() -> None:
    store = PropertyStore()
    blob = Element(name="CCD1", value=b"", format=".fits")
    store.apply(DefVector(kind="BLOB", device=DEV, name="CCD1", elements={"CCD1": blob}))
    store.apply(SetVector(kind="BLOB", device=DEV, name="CCD1", state="Ok", elements={
        "CCD1": Element(name="CCD1", value=b"SIMPLE  = T" * 1000, format=".fits", size=11000),
    }))
    prop = store.get(DEV, "CCD1")
    assert prop is not None
    assert prop.elements["CCD1"].value == b""
    assert prop.elements["CCD1"].size == 11000


def test_deleting_a_device_removes_all_its_properties_and_nothing_else() -> None:
    store = PropertyStore()
    for device in (DEV, "Other"):
        for name in ("CONNECTION", "CCD_GAIN"):
            store.apply(DefVector(kind="Number", device=device, name=name))
    store.apply(DelProperty(device=DEV, name="CCD_GAIN"))
    assert store.get(DEV, "CCD_GAIN") is None
    assert store.get(DEV, "CONNECTION") is not None
    store.apply(DelProperty(device=DEV))
    assert store.devices() == ["Other"]
    store.clear()
    assert store.devices() == []


def test_the_last_message_per_device_is_remembered_within_a_bound() -> None:
    store = PropertyStore()
    store.apply(Message(device=DEV, message="first"))
    store.apply(Message(device=DEV, message="exposure failed"))
    store.apply(Message(device=None, message="from the server"))
    assert store.last_message(DEV) == "exposure failed"
    for i in range(1000):
        store.apply(Message(device=f"device {i}", message="hello"))
    assert store.last_message(DEV) is None  # the oldest went first
    assert store.last_message("device 999") == "hello"
    assert sum(store.last_message(f"device {i}") is not None for i in range(1000)) == 256
