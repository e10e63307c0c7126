"""BLOB payloads: streaming base64 decode (sans-I/O) and FITS decode (run in a worker thread).

An 8192×8192 16-bit frame is 134 MB of FITS and 180 MB of base64 text. Building that text as one
``str`` and decoding it in one call holds the GIL for most of a second, which stalls the trio loop
(reference/indi.md §5). :class:`Base64Stream` instead decodes each piece of text as the XML parser
hands it over, keeping at most three characters back between pieces, so the only large object is
the growing ``bytearray`` of decoded bytes.

:func:`decode_image` turns the decoded bytes into a 2-D ``uint16`` array plus the FITS header. It
is CPU-bound: call it through ``trio.to_thread.run_sync``. astropy is imported with this module,
not lazily: importing it inside the worker thread stalled the event loop for ~90 ms.
"""

from __future__ import annotations

import binascii
import io
import warnings
import zlib
from dataclasses import dataclass, field
from typing import Final

import numpy as np
from astropy.io import fits

from phdserver.errors import CameraError

__all__ = ["Base64Stream", "BlobTooLarge", "DecodedImage", "decode_image"]

_WHITESPACE: Final = b" \t\r\n"
_ALPHABET: Final = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
_STRUCTURAL_KEYS: Final = frozenset(
    {
        "SIMPLE",
        "BITPIX",
        "NAXIS",
        "NAXIS1",
        "NAXIS2",
        "NAXIS3",
        "EXTEND",
        "BZERO",
        "BSCALE",
        "PCOUNT",
        "GCOUNT",
        "XTENSION",
        "END",
        "",
        "COMMENT",
        "HISTORY",
        "CHECKSUM",
        "DATASUM",
    }
)


class BlobTooLarge(ValueError):
    """The decoded payload grew past the configured cap."""


class Base64Stream:
    """Decode base64 text that arrives in arbitrary pieces into a ``bytearray``.

    Whitespace anywhere is ignored (some drivers wrap lines); any other character outside the
    base64 alphabet raises ``binascii.Error``. ``max_bytes`` bounds the decoded size.
    """

    __slots__ = ("_max_bytes", "_out", "_tail")

    def __init__(self, *, max_bytes: int) -> None:
        self._out = bytearray()
        self._tail = b""
        self._max_bytes = max_bytes

    def __len__(self) -> int:
        return len(self._out)

    def feed(self, text: str | bytes) -> None:
        """Decode as much of ``text`` as forms whole 4-character groups; keep the rest."""
        if isinstance(text, str):
            try:
                raw = text.encode("ascii")
            except UnicodeEncodeError as exc:
                raise binascii.Error("non-ASCII character in base64 data") from exc
        else:
            raw = text
        if raw.translate(None, _ALPHABET):  # whitespace or garbage: the slow, strict path
            raw = raw.translate(None, _WHITESPACE)
            strict = True
        else:
            strict = False  # only alphabet characters: the lenient decoder is 1.6× faster
        if self._tail:
            raw = self._tail + raw
        usable = len(raw) - len(raw) % 4
        self._tail = raw[usable:]
        if usable:
            if len(self._out) + usable // 4 * 3 > self._max_bytes + 2:
                raise BlobTooLarge(f"BLOB larger than {self._max_bytes} bytes")
            self._out += binascii.a2b_base64(raw[:usable], strict_mode=strict)

    def finish(self) -> bytearray:
        """Return the decoded bytes; a dangling partial group is an error."""
        if self._tail:
            raise binascii.Error(f"base64 data ends with {len(self._tail)} stray characters")
        return self._out


@dataclass(frozen=True, slots=True, kw_only=True)
class DecodedImage:
    """A frame decoded from a BLOB: ``data`` is 2-D ``uint16`` (``data[y, x]``, top row first)."""

    data: np.ndarray
    bits_per_pixel: int
    """What the file held: 8 or 16 (floats and 32-bit integers are clipped into 16 bits)."""
    header: dict[str, object] = field(default_factory=dict)


def decode_image(payload: bytes | bytearray, blob_format: str, *, device: str) -> DecodedImage:
    """Decode one INDI image BLOB into a 2-D ``uint16`` frame.

    Parameters
    ----------
    payload
        The BLOB bytes after base64 decoding.
    blob_format
        The BLOB's ``format`` attribute: ``.fits``, ``.fits.z`` (zlib) or ``.fits.fz`` (tile
        compressed); anything else is refused.
    device
        The INDI device name, for error messages.

    Returns
    -------
    DecodedImage
        The pixels as ``uint16``, the source bit depth and the FITS header keywords (structural
        keywords such as BITPIX and NAXIS left out).

    Raises
    ------
    CameraError
        The payload is not a FITS image we can use (wrong format, not 2-D, corrupt).

    Notes
    -----
    8-bit frames keep their values (0..255) and report ``bits_per_pixel=8``. Signed or floating
    point data are clipped to 0..65535. Rows are flipped when ``ROWORDER = 'BOTTOM-UP'`` so that
    row 0 is always the top of the sensor, as INDI's own FITS files (``TOP-DOWN``) have it.
    """
    fmt = blob_format.strip().lower()
    if fmt.endswith(".z"):
        try:
            payload = zlib.decompress(payload)
        except zlib.error as exc:
            raise CameraError(f"INDI: '{device}' sent a corrupt compressed BLOB: {exc}") from exc
        fmt = fmt[:-2]
    if fmt not in (".fits", ".fit", ".fts", ".fits.fz"):
        raise CameraError(
            f"INDI: '{device}' sent a {blob_format!r} image; only FITS is supported "
            "(set the driver's CCD_TRANSFER_FORMAT to FITS)"
        )
    try:
        plain = _decode_plain(payload) if fmt != ".fits.fz" else None
        raw, header = plain if plain is not None else _decode_with_astropy(payload)
    except CameraError:
        raise
    except Exception as exc:  # astropy raises many types on corrupt input
        raise CameraError(f"INDI: '{device}' sent an unreadable FITS image: {exc}") from exc
    if raw is None:
        raise CameraError(f"INDI: '{device}' sent a FITS file without image data")
    if raw.ndim != 2:
        raise CameraError(
            f"INDI: '{device}' sent a {raw.ndim}-D image {raw.shape}; only 2-D (mono) frames "
            "are supported"
        )
    bits = 8 if raw.dtype.itemsize == 1 else 16
    data = _to_uint16(raw)
    if str(header.get("ROWORDER", "")).strip().upper() == "BOTTOM-UP":
        data = np.ascontiguousarray(data[::-1])
    return DecodedImage(data=data, bits_per_pixel=bits, header=header)


def _keywords(header: fits.Header) -> dict[str, object]:
    return {
        k: v for k, v in header.items() if k not in _STRUCTURAL_KEYS and not k.startswith("NAXIS")
    }


def _decode_plain(payload: bytes | bytearray) -> tuple[np.ndarray, dict[str, object]] | None:
    """Fast path for what INDI drivers send: one uncompressed 2-D image, 8 or 16 bits.

    astropy reads such a file with three full copies made while holding the GIL (0.2-0.6 s
    each for an 8192² frame, which stalls the event loop that long). Here astropy parses only
    the header; the pixels are a zero-copy view of the BLOB, converted by numpy, which releases
    the GIL. Returns None for anything else (the caller falls back to astropy).
    """
    view = memoryview(payload)
    end = _header_end(view)
    if end is None:
        return None
    header = fits.Header.fromstring(bytes(view[:end]).decode("ascii", errors="replace"))
    bitpix, bzero = header.get("BITPIX"), header.get("BZERO", 0)
    if (
        header.get("SIMPLE") is not True
        or header.get("NAXIS") != 2
        or header.get("BSCALE", 1) != 1
        or (bitpix, bzero) not in ((16, 32768), (16, 0), (8, 0))
    ):
        return None
    width, height = int(header["NAXIS1"]), int(header["NAXIS2"])
    itemsize = 2 if bitpix == 16 else 1
    if width <= 0 or height <= 0 or end + width * height * itemsize > len(payload):
        return None
    dtype = ">u2" if bzero == 32768 else ">i2" if bitpix == 16 else "u1"
    raw = np.frombuffer(payload, dtype=dtype, count=width * height, offset=end)
    raw = raw.reshape(height, width)
    if bzero == 32768:  # stored as int16 - 32768: flipping the top bit undoes the offset
        data = raw.astype(np.uint16)
        data ^= np.uint16(0x8000)
        return data, _keywords(header)
    return raw, _keywords(header)


def _header_end(view: memoryview, max_blocks: int = 100) -> int | None:
    """Offset of the data after the primary header (the block holding the END card)."""
    for block in range(0, min(len(view), max_blocks * 2880), 2880):
        chunk = bytes(view[block : block + 2880])
        for card in range(0, len(chunk) - 79, 80):
            if chunk[card : card + 8] == b"END     ":
                return block + 2880
    return None


def _decode_with_astropy(payload: bytes | bytearray) -> tuple[np.ndarray | None, dict[str, object]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Unexpected extra padding" on .fits.fz BLOBs
        with fits.open(io.BytesIO(payload), memmap=False, lazy_load_hdus=False) as hdus:
            hdu = next((h for h in hdus if h.data is not None and h.data.ndim >= 1), None)
            if hdu is None:
                return None, {}
            return np.asarray(hdu.data), _keywords(hdu.header)


def _to_uint16(raw: np.ndarray) -> np.ndarray:
    """Convert any FITS pixel type to native-endian ``uint16`` (clipping what does not fit)."""
    if raw.dtype == np.uint16 and raw.dtype.isnative:
        return np.ascontiguousarray(raw)
    if raw.dtype.kind == "u" and raw.dtype.itemsize <= 2:
        return raw.astype(np.uint16)
    if raw.dtype.kind == "f":
        raw = np.nan_to_num(raw, nan=0.0, posinf=65535.0, neginf=0.0)
        return np.clip(np.rint(raw), 0, 65535).astype(np.uint16)
    return np.clip(raw, 0, 65535).astype(np.uint16)
